"""A target without training cells keeps the prior: no data-free start, and intervals as wide as the prior says."""

import logging

import numpy as np
import pytest

import pertpyro
from pertpyro.data import observed_shift
from pertpyro.evaluation import ate_metrics, split_heldout_perturbations


@pytest.fixture(scope="module")
def heldout_target():
    adata = pertpyro.datasets.simulate(n_cells=1500, n_genes=50, n_targets=5, n_combinations=0, seed=0)
    pertpyro.setup_anndata(adata)  # registered on the full data: G0003 is a known target
    split = split_heldout_perturbations(adata, ["G0003"], seed=0)
    train, test = adata[split == "train"].copy(), adata[split == "test"].copy()
    model = pertpyro.PerturbationModel(train, latent_dim=4, seed=0)
    model.train(max_epochs=30, batch_size=256, progress_bar=False, seed=0)
    return model, train, test


def test_unseen_target_starts_at_the_prior(heldout_target):
    model, _, _ = heldout_target
    row = list(model.registry.targets).index("G0003")
    loc = model.guide.effect_loc.detach()[row]
    scale = model.guide.effect_scale().detach()[row]
    prior_scale = model.program.effect_prior_scale().detach()
    # No likelihood term reaches these parameters: they start at the prior's centre and standard deviation
    # (sigma_g sqrt(2) for the Student-t(4) prior), and only the noise of the KL's gradient moves them (Adam's
    # steps of about lr = 5e-3, 180 steps): far less than the prior's scale.
    assert loc.abs().max() < 0.15
    assert np.median((loc.abs() / prior_scale).numpy()) < 0.25
    np.testing.assert_allclose(scale.numpy(), np.sqrt(2) * prior_scale.numpy(), rtol=0.3)


def test_unseen_target_intervals_cover_its_observed_shift(heldout_target):
    model, _, test = heldout_target
    ate = model.ate("G0003", n_samples=100, seed=0).set_index("gene")
    observed = observed_shift(test, labels=["G0003"]).loc["G0003", ate.index]
    covered = ((ate["lower"] <= observed) & (observed <= ate["upper"])).mean()
    assert covered >= 0.8


def test_ate_metrics_do_not_rank_the_unseen_target_below_no_change(heldout_target):
    model, train, test = heldout_target
    table = ate_metrics(
        model, test, adata_train=train, baselines=["no_change"], per_perturbation=True, iwelbo=False
    ).set_index(["method", "perturbation"])
    mse_model = table.loc[(type(model).__name__, "G0003"), "mse_all"]
    mse_none = table.loc[("no_change", "G0003"), "mse_all"]
    assert mse_model <= 1.1 * mse_none


def test_labels_with_few_cells_are_named_at_setup(caplog):
    adata = pertpyro.datasets.simulate(n_cells=300, n_genes=10, n_targets=2, n_combinations=0, seed=1)
    rare = adata.obs_names[adata.obs["perturbation"] == "G0001"][:3]
    keep = ~adata.obs_names.isin(adata.obs_names[adata.obs["perturbation"] == "G0001"].difference(rare))
    adata = adata[keep].copy()
    with caplog.at_level(logging.WARNING, logger="pertpyro"):
        pertpyro.setup_anndata(adata)
    assert "G0001 (3)" in caplog.text
