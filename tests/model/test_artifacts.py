"""The artifact block: simulator truth, recovery from noisy labels, do(artifact=0), label safety, bad inputs."""

import numpy as np
import pandas as pd
import pyro
import pytest
import torch
from pyro import poutine
from sklearn.metrics import roc_auc_score

import pertpyro
import pertpyro.model._cells as _model_module
from pertpyro.causal._population import subset_batch
from pertpyro.evaluation import artifact_detection, energy_distance, qc_pass_rate

SIM = {"n_cells": 800, "n_genes": 40, "n_targets": 4, "n_combinations": 0, "n_truth_cells": 0, "seed": 3}
TRAIN = {"max_epochs": 20, "batch_size": 200, "progress_bar": False, "early_stopping": False}


def _artifact_screen(flip: float = 0.2, **kwargs):
    adata = pertpyro.datasets.simulate(**(SIM | kwargs), doublet_rate=0.1, low_quality_rate=0.1)
    truth = (adata.obs["artifact_type"] != "none").to_numpy()
    flipped = np.random.default_rng(0).random(adata.n_obs) < flip
    adata.obs["artifact"] = truth ^ flipped
    pertpyro.setup_anndata(adata, perturbation_key="perturbation", control="control")
    return adata, truth


@pytest.fixture(scope="module")
def latent_fit():
    """A latent-mode model trained on a screen with 20% of its artifact labels flipped (trained once)."""
    pertpyro.set_seed(0)
    adata, truth = _artifact_screen()
    labels_before = adata.obs["artifact"].copy()
    model = pertpyro.PerturbationModel(adata, latent_dim=4, artifacts="latent")
    model.train(**TRAIN)
    return model, adata, truth, labels_before


def test_simulator_artifacts_keep_clean_truth():
    clean = pertpyro.datasets.simulate(**SIM)
    dirty = pertpyro.datasets.simulate(**SIM, doublet_rate=0.1, low_quality_rate=0.1)
    assert "artifact_type" not in clean.obs
    assert not clean.var_names.str.startswith("MT-").any()
    assert (dirty.layers["clean_counts"] != clean.X).nnz == 0  # the clean cells are the same draws
    kind = dirty.obs["artifact_type"].to_numpy()
    assert (kind == "doublet").sum() == 80
    assert (kind == "low_quality").sum() == 80
    partner = dirty.uns["truth"]["artifacts"]["doublet_partner"]
    rows = np.flatnonzero(kind == "doublet")
    expected = clean.X[rows] + clean.X[partner[rows]]
    assert abs(dirty.X[rows] - expected).sum() == 0
    untouched = np.flatnonzero(kind == "none")
    assert abs(dirty.X[untouched] - clean.X[untouched]).sum() == 0
    lib = np.asarray(dirty.X.sum(1)).ravel()
    mito = np.asarray(dirty[:, dirty.var_names.str.startswith("MT-")].X.sum(1)).ravel() / lib
    assert np.median(lib[kind == "low_quality"]) < 0.4 * np.median(lib[kind == "none"])
    assert np.median(mito[kind == "low_quality"]) > 3 * np.median(mito[kind == "none"])
    assert dirty.uns["truth"]["genes"] == list(dirty.var_names)


def test_latent_mode_corrects_flipped_labels(latent_fit):
    model, adata, truth, _ = latent_fit
    prob = model.artifact_probability(n_samples=2)
    label_auroc = roc_auc_score(truth, adata.obs["artifact"])  # about 0.8 with 20% flipped
    scores = artifact_detection(truth, prob)
    assert scores["auroc"] > label_auroc + 0.05
    kind = adata.obs["artifact_type"].to_numpy()
    assert prob[kind == "low_quality"].mean() > 0.85
    assert prob[kind == "none"].mean() < 0.15
    eps = model.program.artifact_block.flip_rates().detach().numpy()
    assert np.all(eps > 0.025)  # the model is learning that the labels are noisy (the rates start at 0.02)


def test_do_artifact_goes_through_poutine_do(latent_fit, monkeypatch):
    model, adata, _, _ = latent_fit
    low = adata[adata.obs["artifact_type"] == "low_quality"][:30]
    traces, intervene = [], _model_module.intervene

    def traced_intervene(*args):  # the engine's model replay, recorded
        trace = poutine.trace(intervene).get_trace(*args)
        traces.append(trace)
        return trace.nodes["_RETURN"]["value"]

    monkeypatch.setattr(_model_module, "intervene", traced_intervene)
    cleaned = model.counterfactual(low, do={"artifact": 0}, n_samples=1)
    monkeypatch.undo()
    nodes = traces[0].nodes
    # poutine.do split the site: the factual "artifact" node (recorded here, stamped by the do handler) keeps the
    # abducted state, while "artifact__CF" (stopped inside the handler, so not recorded) carried the value 0
    # downstream; the trace's own counts show the intervened world (checked below against the raw cells)
    assert nodes["artifact"].get("_intervener_id") is not None
    assert "artifact__CF" not in nodes or float(nodes["artifact__CF"]["value"].abs().max()) == 0.0
    assert float(nodes["artifact"]["value"].mean()) > 0.8  # the factual state was abducted: these are artifacts
    with pertpyro.local_params():
        baseline = poutine.trace(intervene).get_trace(*traces[0].nodes["_INPUT"]["args"][:3], {})
    assert baseline.nodes["artifact"].get("_intervener_id") is None  # no do, no stamp
    # cleaning restores the mitochondrial fraction and the depth of clean cells
    mito = low.var_names.str.startswith("MT-")
    counts = cleaned.layers["counts"]
    raw = low.X.toarray()
    clean = low.layers["clean_counts"].toarray()
    frac = lambda x: x[:, mito].sum(1) / x.sum(1)  # noqa: E731
    assert np.median(frac(counts)) < 0.5 * np.median(frac(raw))
    assert np.median(counts.sum(1)) > 2 * np.median(raw.sum(1))
    assert energy_distance(counts, clean) < energy_distance(raw, clean)
    with pytest.raises(ValueError, match="0 or 1"):
        model.counterfactual(low, do={"artifact": 2})


def test_labels_never_overwritten(latent_fit):
    model, adata, _, labels_before = latent_fit
    pd.testing.assert_series_equal(adata.obs["artifact"], labels_before)
    assert "pertpyro_artifact_prob" not in adata.obs
    view = adata[:100].copy()
    columns = list(view.obs.columns)
    prob = model.artifact_probability(view, n_samples=1, write=True)
    assert list(view.obs.columns) == [*columns, "pertpyro_artifact_prob"]
    np.testing.assert_allclose(view.obs["pertpyro_artifact_prob"].to_numpy(), prob.to_numpy())
    pd.testing.assert_series_equal(view.obs["artifact"], labels_before[:100])


def test_bad_artifact_inputs(tiny_adata):
    with pytest.raises(ValueError, match="no artifact column 'artifact'.*pp.qc"):
        pertpyro.PerturbationModel(tiny_adata, artifacts="observed")
    with pytest.raises(ValueError, match="artifacts must be None"):
        pertpyro.PerturbationModel(tiny_adata, artifacts="yes")
    tiny_adata.obs["artifact"] = ["doublet"] * tiny_adata.n_obs
    with pytest.raises(ValueError, match="must hold booleans"):
        pertpyro.PerturbationModel(tiny_adata, artifacts="observed")
    tiny_adata.obs["artifact"] = np.where(np.arange(tiny_adata.n_obs) % 2 == 0, 1.0, np.nan)
    with pytest.raises(ValueError, match="missing values"):
        pertpyro.PerturbationModel(tiny_adata, artifacts="observed")
    tiny_adata.obs["artifact"] = np.arange(tiny_adata.n_obs) % 3  # 0, 1, 2
    with pytest.raises(ValueError, match="must hold booleans"):
        pertpyro.PerturbationModel(tiny_adata, artifacts="observed")
    tiny_adata.obs["artifact"] = np.arange(tiny_adata.n_obs) % 2 == 0
    model = pertpyro.PerturbationModel(tiny_adata, artifacts="observed", latent_dim=2)  # bools are fine
    model.train(max_epochs=1, batch_size=64, progress_bar=False)
    plain = pertpyro.PerturbationModel(tiny_adata, latent_dim=2)
    plain.train(max_epochs=1, batch_size=64, progress_bar=False)
    with pytest.raises(ValueError, match="intervenable sites"):
        plain.counterfactual(tiny_adata[:5], do={"artifact": 0})
    with pytest.raises(ValueError, match="no artifact block"):
        plain.artifact_probability()


def test_all_control_data_set_detects_artifacts():
    adata = pertpyro.datasets.simulate(**(SIM | {"n_cells": 500}), doublet_rate=0.1, low_quality_rate=0.1)
    adata.obs["perturbation"] = "control"
    truth = (adata.obs["artifact_type"] != "none").to_numpy()
    pertpyro.setup_anndata(adata, perturbation_key="perturbation", control="control")
    with pytest.raises(ValueError, match="only the artifact model"):
        pertpyro.PerturbationModel(adata)
    model = pertpyro.PerturbationModel(adata, latent_dim=4, artifacts="latent")  # no labels at all
    model.train(**(TRAIN | {"max_epochs": 12}))
    prob = model.artifact_probability(n_samples=1)
    low = adata.obs["artifact_type"].to_numpy() == "low_quality"
    assert roc_auc_score(low[~truth | low], prob[~truth | low]) > 0.95  # low-quality vs clean, unsupervised


def test_qc_pass_rate_and_energy_distance():
    adata = pertpyro.datasets.simulate(**SIM, doublet_rate=0.1, low_quality_rate=0.2)
    kind = adata.obs["artifact_type"].to_numpy()
    reference = adata[kind == "none"]
    assert qc_pass_rate(adata[kind == "none"], reference) > 0.95
    assert qc_pass_rate(adata[kind == "low_quality"], reference) < 0.5  # the rate can go below one half
    assert qc_pass_rate(adata[kind == "low_quality"], reference, layer="clean_counts") > 0.9
    x = adata.layers["clean_counts"]
    same = energy_distance(x[:300], x[300:600])
    assert abs(same) < 0.2 * energy_distance(adata.X[kind == "low_quality"], x[kind == "none"])
    with pytest.raises(ValueError, match="both"):
        artifact_detection(np.zeros(5, bool), np.arange(5.0))


def test_iwelbo_sums_artifact_states_like_pyro_enumeration(latent_fit):
    """One particle: the IWELBO of a cell is its ELBO with every discrete state summed out; Pyro's TraceEnum_ELBO
    (an independent implementation of that sum) on the model with the globals fixed gives the same total."""
    from pyro.infer import TraceEnum_ELBO

    from pertpyro.data._loader import standalone_args
    from pertpyro.inference._iwelbo import iwelbo_per_cell
    from pertpyro.module._artifacts import posterior_mean_globals
    from pertpyro.module._program import MAX_PLATE_NESTING

    model, adata, _, _ = latent_fit
    batch = subset_batch(model.cell_data, np.arange(60))
    assert batch["artifact"] is not None  # the labels enter (artifact_label)
    fixed = posterior_mean_globals(model.program, model.guide)
    args = standalone_args(batch)
    pyro.set_rng_seed(5)
    ours = float(iwelbo_per_cell(model.program, model.guide, batch, n_samples=1).sum())
    conditioned = poutine.condition(model.program, data=fixed)
    with pertpyro.local_params(), torch.no_grad():
        pyro.set_rng_seed(5)  # the same draw of z: the guide runs first, the model's enumeration draws nothing
        loss = TraceEnum_ELBO(max_plate_nesting=MAX_PLATE_NESTING).loss(
            conditioned, poutine.block(model.guide, hide=list(fixed)), *args
        )
        trace = poutine.trace(conditioned).get_trace(*args)
    global_log_prior = sum(float(trace.nodes[name]["fn"].log_prob(value).sum()) for name, value in fixed.items())
    assert -loss - global_log_prior == pytest.approx(ours, rel=1e-4)


def test_iwelbo_of_counts_higher_with_the_block(latent_fit):
    """The block explains the artifact cells' counts: a higher IWELBO of ``log p(x)`` there, and about the same on
    clean cells. The labels are not scored (the value bounds the counts' likelihood, comparable across models)."""
    model, adata, truth, _ = latent_fit
    counts_only = adata.copy()
    del counts_only.obs["artifact"]
    assert model.iwelbo(adata[:200], n_samples=3) == pytest.approx(model.iwelbo(counts_only[:200], n_samples=3))
    plain = pertpyro.PerturbationModel(adata, latent_dim=4)
    plain.train(**TRAIN)
    gain = {
        name: model.iwelbo(adata[rows], n_samples=5) - plain.iwelbo(adata[rows], n_samples=5)
        for name, rows in (("artifact", truth), ("clean", ~truth))
    }
    assert gain["artifact"] > 1.0  # about 1.9 nats per artifact cell
    assert abs(gain["clean"]) < gain["artifact"] / 2  # about -0.4: clean cells pay the prior's artifact mass


def test_doublet_composition_is_the_mixture_with_an_unperturbed_partner(latent_fit):
    block = latent_fit[0].program.artifact_block
    gen = torch.Generator().manual_seed(0)
    base, effect = torch.randn(3, 40, generator=gen), torch.randn(3, 40, generator=gen)
    embedding = torch.randn(40, generator=gen)
    ones, zeros = torch.ones(3), torch.zeros(3)
    doublet = block.artifact_logits(base + effect, base, ones, zeros, embedding)
    mixture = (torch.softmax(base + effect, -1) + torch.softmax(base, -1)) / 2
    torch.testing.assert_close(torch.softmax(doublet, -1), mixture)
    low = block.artifact_logits(base + effect, base, ones, ones, embedding)
    torch.testing.assert_close(low, base + effect + embedding)
    torch.testing.assert_close(block.artifact_logits(base + effect, base, zeros, ones, embedding), base + effect)


def test_ate_population_cleaned_to_clean_depths(latent_fit):
    """Effects among clean cells: a population of low-quality cells (a fifth of the depth) gives the clean one's ATE.

    Under ``do(artifact=0)`` the cells are moved to a clean cell's depth, as the simulator's truth (fresh clean
    cells) has it. At their own depth (as before) the knockouts' log-normalised shifts differed from the clean
    population's by up to 36% here (this test failed).
    """
    model, adata, _, _ = latent_fit
    kind = adata.obs["artifact_type"].to_numpy()
    targets = list(model.registry.targets)
    kwargs = {"n_samples": 4, "max_cells": None, "calibrated": False}
    low = model.ate(targets, cells=adata[kind == "low_quality"], **kwargs)
    clean = model.ate(targets, cells=adata[np.flatnonzero(kind == "none")[:200]], **kwargs)
    own = lambda t: t[t["perturbation"] == t["gene"]]["mean"].to_numpy()  # noqa: E731  knockout of own gene
    np.testing.assert_allclose(own(low), own(clean), rtol=0.15)
    truth = pertpyro.datasets.simulate(**(SIM | {"n_truth_cells": 2000}))
    true_own = np.diag(pertpyro.datasets.truth_shift_frame(truth).to_numpy()[:, : len(targets)])
    assert np.all(np.sign(own(clean)) == np.sign(true_own))


def test_qc_evidence_is_learned_and_ranks_doublets_at_least_as_well_as_the_score():
    """A noisy doublet score enters as evidence: its law per state is learned, and the posterior beats the score."""
    adata = pertpyro.datasets.simulate(**SIM, doublet_rate=0.15, low_quality_rate=0.05)
    doublet = (adata.obs["artifact_type"] == "doublet").to_numpy()
    rng = np.random.default_rng(0)
    logit = rng.normal(-2.0 + 1.5 * doublet, 1.0)  # a weak score: AUROC about 0.85
    adata.obs["doublet_score"] = 1 / (1 + np.exp(-logit))
    adata.obs.loc[adata.obs_names[:5], "doublet_score"] = np.nan  # unscored cells are left out
    pertpyro.setup_anndata(adata, perturbation_key="perturbation", control="control")
    model = pertpyro.PerturbationModel(adata, latent_dim=4, artifacts="latent", seed=0)
    assert model.init_kwargs["artifact_evidence"] == [["doublet_score", "logit"]]
    model.train(**TRAIN, seed=0)
    block = model.program.artifact_block
    loc = block.evidence_laws()[0].detach().numpy()[:, 0]
    assert loc[1] > loc[0] + 0.7  # the doublet state's scores are higher than the clean state's (truth: +1.5)
    keep = np.isfinite(adata.obs["doublet_score"].to_numpy())
    score_auroc = roc_auc_score(doublet[keep], adata.obs["doublet_score"].to_numpy()[keep])
    prob = model.artifact_probability(n_samples=2, kind="doublet").to_numpy()
    assert roc_auc_score(doublet[keep], prob[keep]) >= score_auroc
    with pytest.raises(ValueError, match="kind must be one of"):
        model.artifact_probability(kind="dying")


def test_bad_qc_evidence_inputs(tiny_adata):
    tiny_adata = tiny_adata.copy()
    with pytest.raises(ValueError, match="no QC evidence column 'doublet_score'"):
        pertpyro.PerturbationModel(tiny_adata, artifacts="latent", artifact_evidence=["doublet_score"])
    tiny_adata.obs["doublet_score"] = "high"
    with pytest.raises(ValueError, match="must be numeric"):
        pertpyro.PerturbationModel(tiny_adata, artifacts="latent", artifact_evidence=["doublet_score"])
    tiny_adata.obs["doublet_score"] = 2.0
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        pertpyro.PerturbationModel(tiny_adata, artifacts="latent", artifact_evidence=[("doublet_score", "logit")])
    with pytest.raises(ValueError, match="artifact_evidence must be 'auto'"):
        pertpyro.PerturbationModel(tiny_adata, artifacts="latent", artifact_evidence="doublet_score")
