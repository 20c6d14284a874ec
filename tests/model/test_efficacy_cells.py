"""Efficacy per cell and per guide on a simulated screen with escapers and guides of different strength.

Per cell: the posterior that the knockout took ranks responders above escapers and is calibrated. Per guide: the
rates recover a weak and a strong guide of one target; ``do(perturbation=...)`` takes the guides' mixture.
"""

import numpy as np
import pandas as pd
import pytest
import torch
from pyro import poutine
from sklearn.metrics import roc_auc_score

import pertpyro
from pertpyro.data._loader import standalone_args
from pertpyro.module.sites import EFFICACY


@pytest.fixture(scope="module")
def escaper_screen():
    """Three strong knockouts (effect sd 1, own gene at -2), two guides each whose logit rates spread by 1.5.

    With seed 0 the guides of G0000 respond in 99% and 60% of their cells. The model has per-guide rates.
    """
    pertpyro.set_seed(0)
    adata = pertpyro.datasets.simulate(
        n_cells=1200,
        n_genes=60,
        n_targets=3,
        n_strong=3,
        n_combinations=0,
        efficacy=(0.5, 0.6),
        effect_density=0.2,
        seed=0,
        n_truth_cells=0,
        n_guides=2,
        guide_spread=1.5,
    )
    pertpyro.setup_anndata(adata, batch_key="batch", guide_key="guide")
    model = pertpyro.PerturbationModel(adata, latent_dim=3, n_hidden=32, seed=0, efficacy_per_guide=True)
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
    # Each target's mean posterior estimates its fraction of responders (320 cells: binomial sd <= 0.03); a
    # guide's is shrunk toward its target (G0001_g2: 12 responders of 160 cells, mean posterior 0.21), so per guide
    # the tolerance is wider
    for key, atol in (("perturbation", 0.08), ("guide", 0.15)):
        groups = adata.obs[key][perturbed].astype(str)
        assert np.allclose(p.groupby(groups).mean(), truth.groupby(groups).mean(), atol=atol)
    # Cells called with confidence: the realised responder fraction matches the mean posterior within 0.05
    for confident in (p < 0.2, p > 0.8):
        assert confident.sum() > 100
        assert abs(p[confident].mean() - truth[confident].mean()) < 0.05


def test_cell_posterior_options(escaper_screen):
    adata, model, _ = escaper_screen
    cells = adata[:200].copy()
    first = model.efficacy_probability(per="cell", adata=cells, n_samples=2, batch_size=64, seed=1)
    again = model.efficacy_probability(per="cell", adata=cells, n_samples=2, batch_size=64, seed=1)
    assert first.index.equals(cells.obs_names)
    pd.testing.assert_series_equal(first, again)  # deterministic under seed
    rates = model.efficacy_probability()  # default: per target
    assert list(rates.index) == list(model.registry.targets)
    with pytest.raises(ValueError, match="per must be one of"):
        model.efficacy_probability(per="gene")
    with pytest.raises(ValueError, match="n_samples"):
        model.efficacy_probability(per="cell", n_samples=0)


def test_guide_rates_recover_a_weak_and_a_strong_guide(escaper_screen):
    adata, model, _ = escaper_screen
    truth = pd.Series(adata.uns["truth"]["guide_efficacy_prob"], index=adata.uns["truth"]["guides"])
    table = model.efficacy_probability(per="guide")
    assert list(table.columns) == ["perturbation", "n_cells", "median", "lower", "upper"]
    assert (table["lower"] <= table["median"]).all()
    assert (table["median"] <= table["upper"]).all()
    strong, weak = table.loc["G0000_g1", "median"], table.loc["G0000_g2", "median"]
    assert truth["G0000_g1"] > 0.95
    assert truth["G0000_g2"] < 0.65
    # ~160 cells per guide: a rate's sampling sd is <= 0.04, and responders are told from escapers almost surely
    assert abs(strong - truth["G0000_g1"]) < 0.1
    assert abs(weak - truth["G0000_g2"]) < 0.1
    assert strong > weak + 0.25  # one rate per target (the model without guides) cannot tell them apart
    # per target: the guides' mixture weighted by their cells
    rate = model.efficacy_probability()["G0000"]
    g = table[table["perturbation"] == "G0000"]
    assert rate == pytest.approx(float((g["median"] * g["n_cells"]).sum() / g["n_cells"].sum()), abs=1e-6)


def _efficacy_probs(model, cells, do=None):
    """``P(efficacy = 1)`` of ``cells`` in the program's trace, globals at their posterior medians."""
    batch = model._cell_data(cells)[np.arange(cells.n_obs)]
    args = standalone_args(batch)
    with pertpyro.local_params(), torch.no_grad():
        latents = model.guide.efficacy_medians()
        program = poutine.condition(model.program, data=latents)
        if do is not None:
            program = poutine.do(program, data=do)
        trace = poutine.trace(program).get_trace(*args)
    return trace.nodes[EFFICACY]["fn"].probs.numpy()


def test_intervention_takes_the_guides_mixture(escaper_screen):
    adata, model, _ = escaper_screen
    table = model.efficacy_probability(per="guide")
    g0000 = adata[adata.obs["perturbation"] == "G0000"]
    own = _efficacy_probs(model, g0000)  # factual cells: their own guide's rate
    expected = table.loc[g0000.obs["guide"].astype(str), "median"].to_numpy()
    np.testing.assert_allclose(own, expected, atol=1e-5)
    controls = adata[adata.obs["perturbation"] == "control"][:50]
    design = torch.zeros(50, 3)
    design[:, 0] = 1.0
    mixed = _efficacy_probs(model, controls, do={"perturbation": design})
    np.testing.assert_allclose(mixed, model.efficacy_probability()["G0000"], atol=1e-5)


def test_guide_rates_save_load_and_refusals(escaper_screen, tmp_path):
    adata, model, _ = escaper_screen
    model.save(tmp_path / "m")
    loaded = pertpyro.PerturbationModel.load(tmp_path / "m", adata)
    pd.testing.assert_frame_equal(loaded.efficacy_probability(per="guide"), model.efficacy_probability(per="guide"))
    pd.testing.assert_frame_equal(loaded.ate("G0001", n_samples=3), model.ate("G0001", n_samples=3))
    with pytest.raises(ValueError, match="sparse_targets"):
        model.train(max_epochs=1, sparse_targets=True, progress_bar=False)
    off = pertpyro.PerturbationModel(adata, latent_dim=3, n_hidden=8)  # per-guide rates are an option
    with pytest.raises(ValueError, match="no per-guide response rates"):
        off.efficacy_probability(per="guide")
    with pytest.raises(ValueError, match="needs the efficacy block"):
        pertpyro.PerturbationModel(adata, efficacy=False, efficacy_per_guide=True)


def test_cell_posterior_without_escapers(tiny_adata):
    """Targets without escapers: every perturbed cell responds (1), controls NaN; no guide column: per target."""
    with pytest.raises(ValueError, match="guide column"):
        pertpyro.PerturbationModel(tiny_adata, efficacy_per_guide=True)
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
