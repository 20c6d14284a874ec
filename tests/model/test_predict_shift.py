"""predict_shift from each label's own cells: a knockout that moves cells along a program of basal variation is
predicted at its full size, where a prediction over control cells' basal states falls short."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

import pertpyro
from pertpyro.causal._factual import shrunk_depth_shifts
from pertpyro.data._statistics import log_normalise

N_GENES = 40


def _screen(n: int, seed: int) -> ad.AnnData:
    """Control cells and two knockouts: ``A`` moves cells along the basal program (its cells' latent state is
    shifted), ``B`` changes four genes directly. Counts are gamma-Poisson around a softmax of the logits."""
    params = np.random.default_rng(0)
    base = params.normal(0, 1, N_GENES) + np.log(5000 / N_GENES)
    loading = params.normal(0, 0.6, N_GENES)
    direct = np.zeros(N_GENES)
    direct[:4] = [-1.5, 1.0, 0.8, -0.8]
    rng = np.random.default_rng(seed)
    counts, labels = [], []
    for label, size in (("control", 2 * n), ("A", n), ("B", n)):
        z = rng.normal(0, 1, size) + (1.5 if label == "A" else 0.0)
        logits = base + z[:, None] * loading + (direct if label == "B" else 0.0)
        share = np.exp(logits - logits.max(1, keepdims=True))
        share /= share.sum(1, keepdims=True)
        mean = share * rng.lognormal(np.log(3000), 0.3, size)[:, None]
        counts.append(rng.poisson(rng.gamma(5.0, mean / 5.0)))
        labels += [label] * size
    obs = pd.DataFrame({"perturbation": labels}, index=[f"s{seed}c{i}" for i in range(len(labels))])
    adata = ad.AnnData(np.concatenate(counts).astype(np.float32), obs=obs)
    adata.var_names = [f"g{i}" for i in range(N_GENES)]
    return adata


@pytest.fixture(scope="module")
def fitted():
    train = _screen(400, seed=1)
    pertpyro.setup_anndata(train)
    pertpyro.set_seed(0)
    model = pertpyro.PerturbationModel(train, latent_dim=2, n_hidden=32, efficacy=False, seed=0)
    model.train(max_epochs=40, batch_size=256, lr=1e-2, seed=0, progress_bar=False)
    test = _screen(3000, seed=2)  # a large held-out sample: its observed shifts are close to the truth
    values = log_normalise(torch.from_numpy(test.X)).numpy()
    labels = test.obs["perturbation"].to_numpy()
    observed = {k: values[labels == k].mean(0) - values[labels == "control"].mean(0) for k in ("A", "B")}
    return model, observed


def _slope_and_mse(observed: np.ndarray, predicted: np.ndarray) -> tuple[float, float]:
    return float(np.polyfit(observed, predicted, 1)[0]), float(np.mean((observed - predicted) ** 2))


def test_own_cells_keep_an_effect_held_by_basal_states(fitted):
    model, observed = fitted
    own = model.predict_shift(["A", "B"], n_samples=20)
    control = model.predict_shift(["A", "B"], n_samples=20, basal="control")
    slope, mse = _slope_and_mse(observed["A"], own.loc["A"].to_numpy())
    _, control_mse = _slope_and_mse(observed["A"], control.loc["A"].to_numpy())
    assert 0.9 < slope < 1.2
    assert mse < 0.2 * control_mse  # the fit put much of A's shift in its cells' basal states
    for frame in (own, control):  # a direct effect on genes is predicted alike either way
        slope_b, mse_b = _slope_and_mse(observed["B"], frame.loc["B"].to_numpy())
        assert 0.9 < slope_b < 1.2
        assert mse_b < 0.02


def test_labels_without_cells_fall_back_to_control_cells(fitted):
    model, _ = fitted
    own = model.predict_shift(["A+B", "control", "A"], n_samples=5, seed=3)
    control = model.predict_shift(["A+B", "control"], n_samples=5, seed=3, basal="control")
    np.testing.assert_allclose(own.loc[["A+B", "control"]], control, atol=1e-6)
    assert (own.loc["control"] == 0).all()
    np.testing.assert_array_equal(own, model.predict_shift(["A+B", "control", "A"], n_samples=5, seed=3))


def test_basal_is_checked(fitted):
    model, _ = fitted
    with pytest.raises(ValueError, match="basal must be one of"):
        model.predict_shift(["A"], basal="cells")


def test_depth_shifts_are_shrunk_by_their_noise():
    """A label with few cells keeps little of its raw depth difference, one with many keeps most of it."""
    rng = np.random.default_rng(0)
    sizes = {"control": 2000, "few": 10, **{f"t{i}": 500 for i in range(8)}}
    true = {"control": 0.0, "few": 0.0, **{f"t{i}": s for i, s in enumerate(np.linspace(-0.1, 0.1, 8))}}
    labels = np.concatenate([[k] * n for k, n in sizes.items()])
    log_depth = np.concatenate([rng.normal(8.0 + true[k], 0.4, n) for k, n in sizes.items()])
    shifts = shrunk_depth_shifts(log_depth, labels, "control")
    assert set(shifts) == set(sizes) - {"control"}
    for i in range(8):
        raw, shrunk = shifts[f"t{i}"]
        assert abs(shrunk - true[f"t{i}"]) < 0.04
        assert 0.85 < shrunk / raw <= 1.0
    raw, shrunk = shifts["few"]
    assert 0 < shrunk / raw < 0.7
    # too few labels to estimate the prior: the raw shifts are kept
    two = shrunk_depth_shifts(log_depth[labels != "few"][:2500], labels[labels != "few"][:2500], "control")
    assert all(raw == shrunk for raw, shrunk in two.values())
