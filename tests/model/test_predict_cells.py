"""Generated cells: sampled integer counts of the posterior predictive, checked against the simulator's truth."""

import numpy as np
import pytest
import torch

import pertpyro
from pertpyro.data._simulate import truth_shift_frame
from pertpyro.data._statistics import log_normalise


@pytest.fixture(scope="module")
def fitted():
    pertpyro.set_seed(0)
    adata = pertpyro.datasets.simulate(
        n_cells=800,
        n_genes=30,
        n_targets=3,
        n_strong=3,
        n_combinations=0,
        seed=2,
        n_truth_cells=3000,
        efficacy=(0.95, 1.0),
    )  # every knockout takes in nearly every cell: the model without the efficacy block trains fastest
    pertpyro.setup_anndata(adata, batch_key="batch")
    model = pertpyro.PerturbationModel(adata, latent_dim=3, n_hidden=32, efficacy=False, seed=0)
    model.train(max_epochs=25, batch_size=256, lr=1e-2, seed=0, progress_bar=False, patience=10)
    controls = adata[adata.obs["perturbation"] == "control"]
    return adata, model, controls


def _lognorm(x):
    return log_normalise(torch.from_numpy(np.asarray(x, dtype=np.float32))).numpy()


def test_sampled_counts_are_cells(fitted):
    """Integers, with the real cells' fraction of zeros (a posterior mean has far fewer), deterministic under seed."""
    adata, model, controls = fitted
    out = model.predict_cells(controls, "control", seed=3)
    assert out.shape == (controls.n_obs, adata.n_vars)
    assert np.array_equal(out.X, np.round(out.X))
    assert (out.X >= 0).all()
    assert out.uns["pertpyro_predict_cells"]["values"] == "sampled_counts"
    assert (out.obs["perturbation"] == "control").all()
    assert list(out.obs["source_cell"]) == list(controls.obs_names)
    real = np.asarray(controls.X.toarray() if hasattr(controls.X, "toarray") else controls.X)
    # ~160 cells x 30 genes: the zero fraction's sampling SD is ~0.01; a misfit NB or an average over draws misses
    # it by half or more (counterfactual's mean over 20 draws below).
    assert abs((out.X == 0).mean() - (real == 0).mean()) < 0.03
    averaged = model.counterfactual(controls, do={"perturbation": "control"}, n_samples=20).layers["counts"]
    assert (averaged == 0).mean() < 0.5 * (real == 0).mean()
    again = model.predict_cells(controls, "control", seed=3)
    np.testing.assert_array_equal(again.X, out.X)
    assert not np.array_equal(model.predict_cells(controls, "control", seed=4).X, out.X)


def test_mean_of_generated_cells_recovers_true_shift(fitted):
    """All labels in one call; each label's mean over generated cells minus the generated controls' is the truth."""
    adata, model, controls = fitted
    truth = truth_shift_frame(adata)
    labels = list(truth.index)
    n = 1000
    out = model.predict_cells(controls, {"control": n} | dict.fromkeys(labels, n), seed=0)
    assert out.n_obs == n * (len(labels) + 1)
    values, obs = _lognorm(out.X), out.obs["perturbation"].astype(str).to_numpy()
    control_mean = values[obs == "control"].mean(0)
    predicted = model.predict_shift(labels, n_samples=30)
    for label in labels:
        shift = values[obs == label].mean(0) - control_mean
        true, ate = truth.loc[label].to_numpy(), predicted.loc[label].to_numpy()
        # 1000 cells per arm: Monte-Carlo SD of a gene's mean shift ~0.05, small beside the effects (up to ~2);
        # cells generated without the perturbation give r ~ 0.
        assert np.corrcoef(shift, true)[0, 1] > 0.9, label
        assert 0.7 < np.polyfit(true, shift, 1)[0] < 1.5, label  # the tiny fit's own slope on the truth: 1.1-1.4
        # the model's own effect (its ATE engine) is what the generated cells carry, up to Monte-Carlo noise
        assert np.corrcoef(shift, ate)[0, 1] > 0.97, label
        assert 0.9 < np.polyfit(ate, shift, 1)[0] < 1.1, label


def test_expected_is_posterior_mean(fitted):
    adata, model, controls = fitted
    label = str(truth_shift_frame(adata).index[0])
    expected = model.predict_cells(controls, label, expected=True, n_samples=5)
    assert expected.uns["pertpyro_predict_cells"]["values"] == "expected_counts"
    np.testing.assert_array_equal(expected.layers["expected_counts"], expected.X)
    assert not np.array_equal(expected.X, np.round(expected.X))
    sampled = np.stack([model.predict_cells(controls, label, seed=s).X for s in range(5)])
    # per gene, over ~160 cells x 5 draws: the sample mean is within a few % of the expectation
    ratio = sampled.mean((0, 1)) / expected.X.mean(0)
    assert np.median(np.abs(ratio - 1)) < 0.06


def test_predict_cells_rejects_bad_input(fitted):
    _, model, controls = fitted
    with pytest.raises(ValueError, match="one perturbation label per cell"):
        model.predict_cells(controls, ["control"] * 3)
    with pytest.raises(ValueError, match="Unknown perturbation target"):
        model.predict_cells(controls, "NOPE")
    with pytest.raises(ValueError, match="one posterior draw per cell"):
        model.predict_cells(controls, "control", n_samples=5)
    with pytest.raises(ValueError, match="positive number of cells"):
        model.predict_cells(controls, {"control": 0})
