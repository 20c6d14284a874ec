"""Tests of the ground-truth simulator :func:`pertpyro.data._simulate.simulate`."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from pertpyro._keys import TRUTH_KEY
from pertpyro.data import _simulate
from pertpyro.data._simulate import simulate, truth_shift_frame

SMALL = {"n_cells": 500, "n_genes": 40, "n_targets": 4, "n_combinations": 1, "n_truth_cells": 200}


@pytest.fixture(scope="module")
def sim():
    # 6 targets, ~930 cells per single target, 1600 controls: enough for the statistical checks below (~1 s).
    return simulate(
        n_cells=8000,
        n_genes=120,
        n_targets=6,
        n_combinations=2,
        n_batches=2,
        effect_density=0.15,
        n_truth_cells=5000,
        seed=1,
    )


def _lognorm(adata):
    x = adata.X.toarray()
    return np.log1p(1e4 * x / x.sum(axis=1, keepdims=True))


def _empirical_shifts(adata, cells=None):
    """Empirical mean shift of log1p(1e4 x / sum x) vs control per label, restricted to ``cells`` (bool)."""
    lognorm = _lognorm(adata)
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    keep = np.ones(adata.n_obs, dtype=bool) if cells is None else cells
    control = lognorm[labels == "control"].mean(axis=0)
    perts = list(adata.uns[TRUTH_KEY]["perturbations"])
    return np.stack([lognorm[(labels == p) & keep].mean(axis=0) - control for p in perts])


def _assert_truth_equal(a, b):
    assert set(a) == set(b)
    for key in a:
        if isinstance(a[key], dict):
            _assert_truth_equal(a[key], b[key])
        else:
            np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]), err_msg=key)


def test_same_seed_same_data_different_seed_different():
    a = simulate(**SMALL, seed=3)
    b = simulate(**SMALL, seed=3)
    c = simulate(**SMALL, seed=4)
    assert (a.X != b.X).nnz == 0
    pd.testing.assert_frame_equal(a.obs, b.obs)
    _assert_truth_equal(a.uns[TRUTH_KEY], b.uns[TRUTH_KEY])
    assert (a.X != c.X).nnz > 0
    assert not np.array_equal(a.uns[TRUTH_KEY]["effect"], c.uns[TRUTH_KEY]["effect"])


def test_threads_do_not_change_result():
    a = simulate(**SMALL, n_jobs=1, seed=5)
    b = simulate(**SMALL, n_jobs=3, seed=5)
    assert (a.X != b.X).nnz == 0
    np.testing.assert_array_equal(a.uns[TRUTH_KEY]["shift"], b.uns[TRUTH_KEY]["shift"])


def test_shapes_labels_and_counts(sim):
    truth = sim.uns[TRUTH_KEY]
    n_targets, n_genes, n_perts = 6, 120, 8
    assert sim.shape == (8000, n_genes)
    assert sim.obs_names.is_unique
    assert sim.var_names.is_unique
    assert list(sim.var_names[:2]) == ["G0000", "G0001"]
    assert list(truth["targets"]) == list(sim.var_names[:n_targets])

    assert sp.isspmatrix_csr(sim.X)
    assert sim.X.dtype == np.float32
    np.testing.assert_array_equal(sim.X.data, np.round(sim.X.data))
    assert (sim.X.data > 0).all()
    np.testing.assert_array_equal(sim.obs["n_counts"].to_numpy(), np.asarray(sim.X.sum(axis=1)).ravel())

    perts = list(truth["perturbations"])
    assert len(perts) == n_perts
    assert "control" not in perts
    combos = perts[n_targets:]
    assert all("+" in p for p in combos)
    for p in combos:
        first, second = p.split("+")
        assert first < second
        assert {first, second} <= set(truth["targets"])
    obs_labels = sim.obs["perturbation"]
    assert isinstance(obs_labels.dtype, pd.CategoricalDtype)
    assert set(obs_labels.astype(str)) == {"control", *perts}
    assert (obs_labels == "control").mean() == pytest.approx(0.2, abs=1e-3)
    assert list(sim.obs["batch"].cat.categories) == ["batch0", "batch1"]

    efficacy = sim.obs["efficacy"].to_numpy()
    assert efficacy.dtype == bool
    assert efficacy[(obs_labels == "control").to_numpy()].all()  # controls: product over no targets = 1
    assert 0 < (~efficacy).sum() < (obs_labels != "control").sum()

    assert truth["effect"].shape == truth["mask"].shape == (n_targets, n_genes)
    assert truth["mask"].dtype == bool
    assert (truth["effect"][~truth["mask"]] == 0).all()
    assert truth["shift"].shape == truth["responder_shift"].shape == (n_perts, n_genes)
    assert truth["efficacy_prob"].shape == (n_targets,)
    assert ((truth["efficacy_prob"] >= 0.5) & (truth["efficacy_prob"] <= 0.9)).all()
    assert truth["W"].shape == (5, n_genes)
    assert truth["theta"].shape == (n_genes,)
    assert truth["latent_dim"] == 5
    assert truth["seed"] == 1
    assert truth["params"]["n_cells"] == 8000
    assert truth["params"]["n_strong"] == 3
    assert truth["strong"].sum() == 3
    # combinations add on the logit scale
    design = truth["design"]
    for p in range(n_targets, n_perts):
        np.testing.assert_allclose(truth["perturbation_effect"][p], truth["effect"][design[p]].sum(axis=0))


def test_truth_round_trips_through_h5ad(sim, tmp_path):
    path = tmp_path / "sim.h5ad"
    sim.write_h5ad(path)
    back = ad.read_h5ad(path)
    _assert_truth_equal(sim.uns[TRUTH_KEY], back.uns[TRUTH_KEY])
    pd.testing.assert_frame_equal(truth_shift_frame(sim), truth_shift_frame(back))
    assert (sim.X != back.X).nnz == 0


def test_truth_shift_frame(sim):
    itt = truth_shift_frame(sim)
    resp = truth_shift_frame(sim, responder=True)
    assert list(itt.index) == list(sim.uns[TRUTH_KEY]["perturbations"])
    assert list(itt.columns) == list(sim.var_names)
    np.testing.assert_array_equal(resp.to_numpy(), sim.uns[TRUTH_KEY]["responder_shift"])
    with pytest.raises(ValueError, match="not made by simulate"):
        truth_shift_frame(ad.AnnData(np.zeros((2, 2), dtype=np.float32)))


def test_knockout_lowers_own_gene(sim):
    truth = sim.uns[TRUTH_KEY]
    own = np.arange(len(truth["targets"]))
    assert (truth["effect"][own, own] == -2.0).all()
    assert (truth["shift"][own, own] < 0).all()
    assert (truth["responder_shift"][own, own] < 0).all()


def test_monte_carlo_truth_matches_sample(sim):
    # Empirical per-gene noise: sd(log1p-normalised expression) <= ~1, with ~930 perturbed and 1600 control cells,
    # gives se ~ 1 * sqrt(1/930 + 1/1600) ~ 0.04, i.e. noise variance ~0.0017 across genes. A strong target's
    # true shift has sd >= ~0.12 across genes (15% of genes with N(0, 1) logit effects, knockout -2, rho >= 0.5),
    # so the expected correlation is >= sqrt(0.0144 / (0.0144 + 0.0017)) ~ 0.95; the Monte Carlo truth itself
    # (5000 coupled cells) has noise sd ~0.005, negligible. Seeds 0-4 gave 0.957-0.992.
    truth = sim.uns[TRUTH_KEY]
    empirical = _empirical_shifts(sim)
    strong = np.flatnonzero(truth["strong"])
    assert len(strong) == 3
    for t in strong:
        r = np.corrcoef(empirical[t], truth["shift"][t])[0, 1]
        assert r > 0.9, (truth["perturbations"][t], r)
    # combinations too, looser (300 cells each, rho_a * rho_b ~ 0.5)
    for p in range(6, 8):
        assert np.corrcoef(empirical[p], truth["shift"][p])[0, 1] > 0.7


def test_itt_is_efficacy_times_responder_shift(sim):
    truth = sim.uns[TRUTH_KEY]
    # Population: escapers are distributed exactly like control cells and the shift is a mean over cells of a
    # per-cell transform, so the intent-to-treat mean is the mixture rho * responders + (1 - rho) * control, and
    # shift = rho * responder_shift exactly (the log1p scale is nonlinear per cell, but a mixture is linear in
    # the mean). The simulator computes it that way.
    np.testing.assert_allclose(truth["shift"], truth["perturbation_efficacy_prob"][:, None] * truth["responder_shift"])

    # Sample: the empirical ITT shift is the responder shift scaled by the observed responder fraction, and escapers
    # show no shift. Slopes use the true responder shift as instrument, cov(y, truth) / cov(x, truth), which is not
    # attenuated by the noise of x. The observed fraction differs from rho by a binomial sd
    # sqrt(0.9 * 0.1 / 930) ... sqrt(0.25 / 930) <= 0.016 and the slope noise is ~0.02 (seeds 0-4: |slope - rho| <=
    # 0.03), hence 0.1. Escapers (~100-450 cells): slope on truth ~ 0 with noise ~0.05 (seeds 0-4: <= 0.04), hence 0.15.
    efficacy = sim.obs["efficacy"].to_numpy()
    itt = _empirical_shifts(sim)
    responders = _empirical_shifts(sim, efficacy)
    escapers = _empirical_shifts(sim, ~efficacy)
    for t in np.flatnonzero(truth["strong"]):
        inst = truth["responder_shift"][t]
        slope = np.cov(itt[t], inst)[0, 1] / np.cov(responders[t], inst)[0, 1]
        assert slope == pytest.approx(truth["efficacy_prob"][t], abs=0.1)
        escaper_slope = np.cov(escapers[t], inst)[0, 1] / np.var(inst, ddof=1)
        assert abs(escaper_slope) < 0.15


def test_chunks_are_independent_and_identically_distributed(monkeypatch):
    # Default chunks (2**18 entries -> 5242 cells at 50 genes) vs tiny chunks (2**10 -> 20 cells, 1000 chunks):
    # same distribution, different draws. E[n_counts] = E[library] = exp(7 + 0.4**2 / 2) ~ 1188 exactly (NB means
    # sum to the library); sd(n_counts) ~ 520, so the mean over 20000 cells has se ~ 3.7: tolerance 20 (> 5 se).
    kwargs = {"n_cells": 20000, "n_genes": 50, "n_targets": 2, "n_combinations": 0, "n_truth_cells": 0}
    default = simulate(**kwargs)
    monkeypatch.setattr(_simulate, "_CHUNK_ENTRIES", 2**10)
    tiny = simulate(**kwargs)
    expected = np.exp(7.0 + 0.4**2 / 2)
    for adata in (default, tiny):
        assert adata.obs["n_counts"].mean() == pytest.approx(expected, abs=20)
        rows = adata.X.toarray()
        assert len(np.unique(rows, axis=0)) == adata.n_obs  # no chunk repeats another's random stream
    # Per-gene mean counts agree gene by gene: relative se of a gene mean over 20000 cells is <= ~3% for genes with
    # mean >= 1 count (NB, theta ~ 5); 6 se across ~50 genes.
    m_default = np.asarray(default.X.mean(axis=0)).ravel()
    m_tiny = np.asarray(tiny.X.mean(axis=0)).ravel()
    big = m_default > 1
    np.testing.assert_allclose(m_tiny[big], m_default[big], rtol=0.2)
    assert (default.X != tiny.X).nnz > 0


def test_large_sample_moments():
    # 200k cells x 20 genes in well under a second; a tail of the library distribution and the nnz rate stay
    # consistent across the ~15 chunks (first vs last 20000 cells; se of each mean ~3.7, tolerance 25).
    adata = simulate(n_cells=200_000, n_genes=20, n_targets=2, n_combinations=0, n_truth_cells=0)
    counts = adata.obs["n_counts"].to_numpy()
    assert counts.mean() == pytest.approx(np.exp(7.0 + 0.4**2 / 2), abs=10)
    assert counts[:20000].mean() == pytest.approx(counts[-20000:].mean(), abs=25)
    nnz = np.diff(adata.X.indptr)
    assert nnz[:20000].mean() == pytest.approx(nnz[-20000:].mean(), abs=0.2)


def test_no_truth_cells_gives_nan_shifts():
    adata = simulate(**{**SMALL, "n_truth_cells": 0})
    assert np.isnan(adata.uns[TRUTH_KEY]["shift"]).all()
    assert np.isnan(adata.uns[TRUTH_KEY]["responder_shift"]).all()


def test_custom_labels_and_single_batch():
    adata = simulate(**SMALL, control="non-targeting", delimiter="_")
    labels = set(adata.obs["perturbation"].astype(str))
    assert "non-targeting" in labels
    assert any("_" in label for label in labels)
    assert list(adata.obs["batch"].cat.categories) == ["batch0"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_cells": 0}, "n_cells"),
        ({"n_cells": 2.5}, "n_cells"),
        ({"n_genes": True}, "n_genes"),
        ({"n_targets": 50, "n_genes": 40}, "n_targets"),
        ({"n_strong": 9, "n_targets": 4}, "n_strong"),
        ({"n_combinations": 7, "n_targets": 4}, "n_combinations"),
        ({"latent_dim": -1}, "latent_dim"),
        ({"n_batches": 0}, "n_batches"),
        ({"effect_density": 1.5}, "effect_density"),
        ({"effect_scale": (1.0,)}, "effect_scale"),
        ({"efficacy": (0.9, 0.5)}, "efficacy"),
        ({"efficacy": (0.5, 1.2)}, "efficacy"),
        ({"library_size": (7.0, -0.1)}, "library_size"),
        ({"dispersion": "5"}, "dispersion"),
        ({"knockout": float("nan")}, "knockout"),
        ({"control_fraction": 0.0}, "control_fraction"),
        ({"control_fraction": 0.6, "combination_fraction": 0.5}, "combination_fraction"),
        ({"control": ""}, "control"),
        ({"control": "G0001"}, "collides"),
        ({"delimiter": "0"}, "delimiter"),
        ({"control": "a+b"}, "delimiter"),
        ({"n_cells": 4}, "too small"),
        ({"seed": -1}, "seed"),
        ({"n_jobs": 0}, "n_jobs"),
        ({"n_truth_cells": -5}, "n_truth_cells"),
    ],
)
def test_argument_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        simulate(**{**SMALL, **kwargs})


def test_guides_have_their_own_response_rates():
    plain = simulate(n_cells=3000, n_genes=20, n_targets=3, n_combinations=1, seed=3, n_truth_cells=0)
    adata = simulate(n_cells=3000, n_genes=20, n_targets=3, n_combinations=1, seed=3, n_truth_cells=0, n_guides=3)
    assert "guide" not in plain.obs
    truth = adata.uns["truth"]
    assert len(truth["guides"]) == 4 * 3  # three singles and one combination, three guides each
    rate = pd.Series(truth["guide_efficacy_prob"], index=truth["guides"])
    obs = adata.obs[adata.obs["perturbation"] != "control"]
    guide = obs["guide"].astype(str)
    # every cell carries a guide of its own label; a label's cells are dealt evenly to its guides
    labels = dict(zip(truth["guides"], truth["guide_labels"], strict=True))
    assert (guide.map(labels) == obs["perturbation"].astype(str)).all()
    counts = guide.value_counts()
    spread = counts.groupby(counts.index.map(labels)).agg(lambda c: c.max() - c.min())
    assert (spread <= 1).all()
    # realised responder fractions follow each guide's rate (~250 cells a guide: sd <= 0.032)
    realised = obs["efficacy"].astype(float).groupby(guide).mean()
    assert np.allclose(realised, rate[realised.index], atol=0.11)
    # a label's rate is its guides' mixture, weighted by their cells
    for p, label in enumerate(truth["perturbations"]):
        mine = counts[[g for g in truth["guides"] if labels[g] == label]]
        mixture = float((rate[mine.index] * mine).sum() / mine.sum())
        assert truth["perturbation_efficacy_prob"][p] == pytest.approx(mixture)
    assert set(adata.obs.loc[adata.obs["perturbation"] == "control", "guide"].astype(str)) == {
        "control_g1",
        "control_g2",
        "control_g3",
    }
