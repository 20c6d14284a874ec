"""Counterfactual queries: abduction -> poutine.do -> prediction, and their agreement with the ATE."""

import numpy as np
import pytest

import pertpyro


@pytest.fixture(scope="module")
def trained():
    pertpyro.set_seed(0)
    adata = pertpyro.datasets.simulate(n_cells=1500, n_genes=40, n_targets=4, n_combinations=1, seed=2, n_truth_cells=0)
    pertpyro.setup_anndata(adata, batch_key="batch")
    model = pertpyro.PerturbationModel(adata, latent_dim=3, seed=0)
    model.train(max_epochs=25, batch_size=256, lr=1e-2, progress_bar=False)
    return adata, model


def test_population_mean_matches_ate(trained):
    adata, model = trained
    controls = adata[adata.obs["perturbation"] == "control"].copy()
    target = model.registry.targets[0]
    treated = model.counterfactual(controls, do={"perturbation": target}, n_samples=30, seed=1)
    untreated = model.counterfactual(controls, do={"perturbation": "control"}, n_samples=30, seed=1)
    cf_shift = treated.X.mean(0) - untreated.X.mean(0)
    ate = model.ate(target, cells=controls, n_samples=30, seed=2)["mean"].to_numpy()
    # both are Monte-Carlo estimates of the same population quantity (30 draws x ~300 cells each);
    # their per-gene disagreement is a few hundredths, far below the effects of a strong target
    assert np.corrcoef(cf_shift, ate)[0, 1] > 0.95
    assert np.abs(cf_shift - ate).max() < 0.15


def test_no_response_equals_control(trained):
    adata, model = trained
    cells = adata[adata.obs["perturbation"] == "control"][:50].copy()
    target = model.registry.targets[0]
    escaped = model.counterfactual(cells, do={"perturbation": target, "efficacy": 0}, n_samples=3, seed=4)
    control = model.counterfactual(cells, do={"perturbation": "control"}, n_samples=3, seed=4)
    np.testing.assert_array_equal(escaped.X, control.X)
    assert escaped.uns["pertpyro_do"] == {"perturbation": target, "efficacy": "0"}
    assert list(escaped.obs_names) == list(cells.obs_names)


def test_responders_shift_more_than_intent_to_treat(trained):
    adata, model = trained
    strong = [t for t, s in zip(adata.uns["truth"]["targets"], adata.uns["truth"]["strong"], strict=True) if s][0]
    itt = model.ate(strong, n_samples=20)["mean"].abs().sum()
    responders = model.ate(strong, n_samples=20, responders=True)["mean"].abs().sum()
    assert responders > itt


def test_bad_interventions(trained):
    adata, model = trained
    cells = adata[:10].copy()
    with pytest.raises(ValueError, match="Unknown perturbation target 'NOPE'"):
        model.counterfactual(cells, do={"perturbation": "NOPE"})
    with pytest.raises(ValueError, match="intervenable sites"):
        model.counterfactual(cells, do={"artifact": 0})
    with pytest.raises(ValueError, match="efficacy can be set to 0 or 1"):
        model.counterfactual(cells, do={"efficacy": 0.5})
    with pytest.raises(ValueError, match="at least one intervention"):
        model.counterfactual(cells, do={})
