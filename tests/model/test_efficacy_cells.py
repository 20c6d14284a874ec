"""Per-cell posterior that the knockout took effect: ranks responders above escapers on a simulated screen."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

import pertpyro


@pytest.fixture(scope="module")
def escaper_screen():
    """Three strong knockouts (effect sd 1, own gene at -2), 40-60% of each target's cells escaped; truth in obs."""
    pertpyro.set_seed(0)
    adata = pertpyro.datasets.simulate(
        n_cells=1200,
        n_genes=60,
        n_targets=3,
        n_strong=3,
        n_combinations=0,
        efficacy=(0.4, 0.7),
        effect_density=0.2,
        seed=0,
        n_truth_cells=0,
    )
    pertpyro.setup_anndata(adata, batch_key="batch")
    model = pertpyro.PerturbationModel(adata, latent_dim=3, n_hidden=32, seed=0)
    model.train(max_epochs=40, batch_size=256, lr=2e-2, seed=0, progress_bar=False, early_stopping=False)
    return adata, model, model.efficacy_probability(per="cell", n_samples=10)


def test_cell_posterior_ranks_responders_above_escapers(escaper_screen):
    adata, _, prob = escaper_screen
    assert isinstance(prob, pd.Series)
    assert prob.index.equals(adata.obs_names)
    control = (adata.obs["perturbation"] == "control").to_numpy()
    assert prob[control].isna().all()
    assert prob[~control].between(0, 1).all()
    truth = adata.obs["efficacy"].to_numpy()[~control]
    # responders differ from escapers by a strong shift on ~12 of 60 genes: near-perfect separation is possible
    assert roc_auc_score(truth, prob[~control]) >= 0.9


def test_cell_posterior_is_calibrated(escaper_screen):
    adata, _, prob = escaper_screen
    perturbed = adata.obs["perturbation"] != "control"
    truth = adata.obs["efficacy"][perturbed].astype(float)
    p = prob[perturbed]
    # Each target's mean posterior estimates its fraction of responders (about 400 cells: binomial sd ~0.025)
    labels = adata.obs["perturbation"][perturbed].astype(str)
    realised = truth.groupby(labels).mean()
    assert np.allclose(p.groupby(labels).mean(), realised, atol=0.08)
    # Cells called with confidence: the realised responder fraction matches the mean posterior within 0.05
    for confident in (p < 0.2, p > 0.8):
        assert confident.sum() > 100
        assert abs(p[confident].mean() - truth[confident].mean()) < 0.05


def test_cell_posterior_options(escaper_screen):
    adata, model, _ = escaper_screen
    first = model.efficacy_probability(per="cell", adata=adata[:300], n_samples=3, batch_size=64, seed=1)
    again = model.efficacy_probability(per="cell", adata=adata[:300], n_samples=3, batch_size=64, seed=1)
    assert first.index.equals(adata.obs_names[:300])
    pd.testing.assert_series_equal(first, again)  # deterministic under seed
    rates = model.efficacy_probability()  # default: per target, as before
    assert list(rates.index) == list(model.registry.targets)
    with pytest.raises(ValueError, match="per must be one of"):
        model.efficacy_probability(per="gene")
    with pytest.raises(ValueError, match="n_samples"):
        model.efficacy_probability(per="cell", n_samples=0)


def test_cell_posterior_without_escapers(tiny_adata):
    """Targets without escapers: every perturbed cell responds (1), controls NaN."""
    for efficacy in (False, ["A"]):
        model = pertpyro.PerturbationModel(tiny_adata, latent_dim=2, n_hidden=8, efficacy=efficacy, seed=0)
        model.train(max_epochs=1, batch_size=120, progress_bar=False, early_stopping=False, seed=0)
        prob = model.efficacy_probability(per="cell", n_samples=2)
        labels = tiny_adata.obs["perturbation"].astype(str)
        assert prob[labels == "control"].isna().all()
        assert (prob[labels.isin(["B", "C"])] == 1.0).all()
        if efficacy is False:
            assert (prob[labels != "control"] == 1.0).all()
            assert (model.efficacy_probability() == 1.0).all()
