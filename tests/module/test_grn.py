"""The ``grn`` block: simulator network, recovery of its edges, the edge table, edge interventions, edge cases."""

import logging

import numpy as np
import pandas as pd
import pytest
import torch
from pyro import poutine

import pertpyro
from pertpyro._settings import local_params
from pertpyro.causal._counterfactual import abduct
from pertpyro.data._loader import standalone_args
from pertpyro.data._simulate_grn import grn_edges, propagate
from pertpyro.evaluation import (
    compare_rankings,
    correlation_baseline,
    edge_scores,
    enrichment,
    model_rankings,
    naive_rankings,
    random_baseline,
)
from pertpyro.module._grn import (
    GRNGuide,
    GRNPrior,
    adjacency_action,
    edge_intervention,
    edge_table,
    total_effect_summary,
    total_effects,
)
from pertpyro.module.sites import ADJACENCY, ADJACENCY_WEIGHT, COUNTS, EFFICACY, PERTURBATION

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def grn_screen():
    adata = pertpyro.datasets.simulate(
        n_cells=1500, n_genes=40, n_targets=8, n_combinations=0, grn=True, grn_density=0.15, n_truth_cells=0, seed=3
    )
    pertpyro.setup_anndata(adata, batch_key="batch")
    return adata


@pytest.fixture(scope="module")
def grn_model(grn_screen):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with torch.random.fork_rng():  # 180 steps: a high learning rate lets the inclusion logits move far enough
        model = pertpyro.PerturbationModel(grn_screen, grn=True, latent_dim=3, n_hidden=32, seed=0)
        model.train(max_epochs=30, batch_size=256, lr=3e-2, seed=0, progress_bar=False, early_stopping=False)
    torch.set_num_threads(threads)
    return model


def test_simulator_grn_truth_is_consistent():
    plain = pertpyro.datasets.simulate(n_cells=300, n_genes=30, n_targets=5, n_truth_cells=0, seed=1)
    assert "grn" not in plain.uns["truth"]  # off by default: outputs unchanged
    adata = pertpyro.datasets.simulate(
        n_cells=300, n_genes=30, n_targets=5, n_regulators=8, grn=True, n_truth_cells=0, seed=1
    )
    g = adata.uns["truth"]["grn"]
    adj = g["adjacency"]
    assert adj.shape == (8, 30)
    assert g["regulators"] == [f"G{i:04d}" for i in range(8)]
    assert np.all(np.diag(adj[:, :8]) == 0)
    # acyclic among regulators: the regulator sub-network is nilpotent
    assert np.allclose(np.linalg.matrix_power(adj[:, :8] != 0, 8).astype(float), 0)
    # the targets' effects are the propagated knockouts, and the edge list matches the matrix
    np.testing.assert_allclose(adata.uns["truth"]["effect"], propagate(adj, knockout=-2.0, n_steps=3)[:5])
    edges = grn_edges(adata)
    assert len(edges) == np.count_nonzero(adj)
    # a gene with no path from target 0 is unaffected by its knockout
    reach = np.eye(8)[0]
    for _ in range(3):
        reach = np.clip(reach + reach @ (adj[:, :8] != 0), 0, 1)
    downstream = (reach @ (adj != 0)) > 0
    downstream[0] = True
    assert np.all(adata.uns["truth"]["effect"][0, ~downstream] == 0)
    with pytest.raises(ValueError, match="n_regulators"):
        pertpyro.datasets.simulate(n_cells=300, n_genes=30, n_targets=5, n_regulators=3, grn=True)


def test_model_propagation_matches_simulator():
    """The model's map from a network to knockout effects is the simulator's (truth lies in the model family)."""
    rng = np.random.default_rng(0)
    from pertpyro.data._simulate_grn import draw_grn

    adj = draw_grn(rng, n_regulators=6, n_genes=20, density=0.3, weight=(0.5, 1.5))
    block = GRNPrior(torch.arange(6), 20, 4, torch.zeros(6, 20), n_steps=3, direct_init=torch.full((6,), -2.0))
    got = block.regulator_effects(torch.as_tensor(adj, dtype=torch.float32)).detach().numpy()
    np.testing.assert_allclose(got, propagate(adj, knockout=-2.0, n_steps=3), atol=1e-5)


def test_recovers_network_above_baselines(grn_model, grn_screen):
    edges = grn_model.grn()
    truth = grn_edges(grn_screen)
    regulators = list(grn_screen.uns["truth"]["grn"]["regulators"])
    model = edge_scores(edges, truth, testable_sources=regulators)
    corr = edge_scores(correlation_baseline(grn_screen, regulators), truth, score="score", testable_sources=regulators)
    rand = edge_scores(random_baseline(edges), truth, score="score", testable_sources=regulators)
    # prevalence ~0.15; a random ranking's AUPRC is about the prevalence (checked beside it)
    assert model["auprc"] >= 3 * model["prevalence"]
    assert model["auprc"] > corr["auprc"] + 0.2
    assert rand["auprc"] < 2 * rand["prevalence"]
    # the weights' signs of confidently included true edges are recovered
    merged = edges[edges["prob"] > 0.8].merge(truth, on=["source", "target"], suffixes=("", "_true"))
    assert len(merged) >= 5
    assert np.mean(np.sign(merged["weight"]) == np.sign(merged["weight_true"])) > 0.9
    predicted = edges[edges["prob"] > 0.5]
    enr = enrichment(predicted, edges, truth)
    assert enr["odds_ratio"] > 5
    assert enr["p_value"] < 1e-6


def test_grn_table_format_and_varp(grn_model, grn_screen):
    edges = grn_model.grn()
    assert list(edges.columns) == [
        "source",
        "target",
        "score",
        "prob",
        "weight",
        "ci_lower",
        "ci_upper",
        "total",
        "total_sd",
    ]
    assert len(edges) == 8 * 40 - 8  # regulators x genes without self edges
    assert not (edges["source"] == edges["target"]).any()
    assert edges["score"].is_monotonic_decreasing
    sd = (edges["ci_upper"] - edges["ci_lower"]) / (2 * 1.6448536)
    np.testing.assert_allclose(edges["score"], edges["prob"] * edges["weight"].abs() / sd, rtol=1e-4)
    assert np.all((edges["ci_lower"] <= edges["weight"]) & (edges["weight"] <= edges["ci_upper"]))
    top = grn_model.grn(threshold=0.5)
    assert len(top) < len(edges)
    assert top["prob"].min() >= 0.5
    assert "pertpyro_grn" not in grn_screen.varp
    grn_model.grn(write_varp=True)
    mat = grn_screen.varp.pop("pertpyro_grn")
    assert mat.shape == (40, 40)
    first = edges.iloc[0]
    genes = list(grn_screen.var_names)
    assert mat[genes.index(first["source"]), genes.index(first["target"])] == pytest.approx(first["prob"])
    with pytest.raises(ValueError, match="threshold"):
        grn_model.grn(threshold=2.0)


def _log_mean(model, batch, action):
    """Mean of the counts (log scale) under an action, with the latents drawn once from the guide."""
    latents = abduct(model.guide, batch)
    extra = action.pop("edges")(latents) if "edges" in action else {}
    with local_params():
        conditioned = poutine.condition(model.program, data=latents)
        trace = poutine.trace(poutine.do(conditioned, data={**action, **extra})).get_trace(
            None, *standalone_args(batch)[1:]
        )
    return trace.nodes[COUNTS]["fn"].base_dist.log_mean  # (cells, genes)


def test_do_on_edge_changes_only_downstream_genes(grn_model, grn_screen):
    edges = grn_model.grn()
    genes = list(grn_screen.var_names)
    regulators = set(grn_model.regulators)
    # the strongest edge into a gene that is not a regulator: nothing lies downstream of its target
    edge = edges[~edges["target"].isin(regulators)].iloc[0]
    source, target = edge["source"], edge["target"]
    batch = grn_model._population(None, 64, 0)
    n = batch["idx"].shape[0]
    design = torch.from_numpy(pertpyro.data._registry.design_matrix([source], grn_model.registry)[0])
    base_action = {PERTURBATION: design.expand(n, -1), EFFICACY: torch.ones(n)}
    where, value = edge_intervention({(source, target): 0}, grn_model.regulators, genes)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        factual = _log_mean(grn_model, batch, dict(base_action))
        torch.manual_seed(0)
        cut = _log_mean(grn_model, batch, {**base_action, "edges": adjacency_action(where, value)})
    diff = (cut - factual).mean(0).detach().numpy()
    diff -= np.median(diff)  # the softmax moves every gene by the same constant
    j = genes.index(target)
    assert abs(diff[j]) > 0.3
    others = np.delete(np.abs(diff), j)
    assert others.max() < 1e-4
    # through the public API: ATE of the source's knockout with the edge removed differs most at the target
    plain = grn_model.ate(source, n_samples=5, max_cells=200)
    removed = grn_model.ate(source, n_samples=5, max_cells=200, do={"adjacency": {(source, target): 0}})
    delta = (removed["mean"] - plain["mean"]).abs().to_numpy()
    assert int(np.argmax(delta)) == j
    with pytest.raises(ValueError, match="Unknown regulator"):
        grn_model.ate(source, n_samples=2, do={"adjacency": {("nope", target): 0}})
    cf = grn_model.counterfactual(
        grn_screen[:20], do={"perturbation": source, "adjacency": {(source, target): 0}}, n_samples=2
    )
    assert cf.shape == (20, 40)


def test_single_target(caplog):
    adata = pertpyro.datasets.simulate(
        n_cells=400, n_genes=20, n_targets=1, n_combinations=0, grn=True, seed=0, n_truth_cells=0, grn_density=0.3
    )
    pertpyro.setup_anndata(adata)
    model = pertpyro.PerturbationModel(adata, grn=True, grn_steps=1, latent_dim=2, n_hidden=16)
    model.train(max_epochs=2, batch_size=128, progress_bar=False)
    edges = model.grn()
    assert set(edges["source"]) == {"G0000"}
    assert len(edges) == 19
    assert np.isfinite(model.ate("G0000", n_samples=2, max_cells=50)["mean"]).all()


def test_targets_not_measured_genes(tiny_adata, caplog):
    """Targets A, B, C are not genes: one-step target -> gene edges, a warning, no varp; extra regulators checked."""
    with caplog.at_level(logging.WARNING, logger="pertpyro"):
        model = pertpyro.PerturbationModel(tiny_adata, grn=True, latent_dim=2, n_hidden=16)
    assert "no target is a measured gene" in caplog.text
    model.train(max_epochs=2, batch_size=64, progress_bar=False)
    edges = model.grn()
    assert set(edges["source"]) == {"A", "B", "C"}
    assert len(edges) == 3 * 30
    with pytest.raises(ValueError, match="varp"):
        model.grn(write_varp=True)
    with pytest.raises(ValueError, match="grn_regulators"):
        pertpyro.PerturbationModel(tiny_adata, grn=True, grn_regulators=["not_a_gene"])
    with pytest.raises(ValueError, match="grn_prior"):
        pertpyro.PerturbationModel(tiny_adata, grn=True, grn_prior=pd.DataFrame({"a": [1]}))
    # extra measured regulators and a prior network that raises some edges' prior inclusion
    prior = pd.DataFrame({"source": ["A", "g1"], "target": ["g0", "g2"]})
    model = pertpyro.PerturbationModel(tiny_adata, grn=True, grn_regulators=["g1"], grn_prior=prior, latent_dim=2)
    logits = model.program.grn.prior_logits
    assert model.regulators == ["A", "B", "C", "g1"]
    assert logits[0, 0] > logits[1, 0]
    assert logits[3, 2] > logits[3, 3]
    with pytest.raises(ValueError, match="no GRN block"):
        pertpyro.PerturbationModel(tiny_adata, latent_dim=2).grn()


def test_save_load_keeps_network(grn_model, grn_screen, tmp_path):
    grn_model.save(tmp_path / "m")
    loaded = pertpyro.PerturbationModel.load(tmp_path / "m", grn_screen)
    pd.testing.assert_frame_equal(loaded.grn(), grn_model.grn())
    # a file saved before the prior network was weighed (no prior_mask, prior_shift) still loads
    state = {k: v for k, v in grn_model.program.grn.state_dict().items() if k not in ("prior_mask", "prior_shift")}
    loaded.program.grn.load_state_dict(state)
    assert loaded.program.grn.prior_shift.item() == 0.0


def test_network_sites_are_global(tiny_adata):
    """``adjacency`` and ``adjacency_weight`` sit outside the cells plate (scale 1), on regulators x genes."""
    model = pertpyro.PerturbationModel(tiny_adata, grn=True, grn_regulators=["g0", "g1"], latent_dim=2, n_hidden=8)
    from pertpyro.data._loader import CellData, make_loader, program_args

    data = CellData(model.adata, model.registry)
    args = program_args(next(iter(make_loader(data, batch_size=64, shuffle=True))), len(data))
    with local_params():
        guide_trace = poutine.trace(model.guide).get_trace(*args)
        model_trace = poutine.trace(poutine.replay(model.program, trace=guide_trace)).get_trace(*args)
    for name in (ADJACENCY, ADJACENCY_WEIGHT):
        assert model_trace.nodes[name]["scale"] == 1.0
        assert model_trace.nodes[name]["value"].shape == (5, 30)
    assert model_trace.nodes[COUNTS]["scale"] == pytest.approx(tiny_adata.n_obs / 64)
    assert "effect" not in model_trace.nodes


def test_total_effect_is_the_propagated_knockout_and_differs_from_the_direct_edge():
    """A near-deterministic guide: ``total`` is the network's propagated knockout, ``score`` the direct edge only."""
    rng = np.random.default_rng(1)
    adj = np.where(rng.random((6, 20)) < 0.3, rng.normal(size=(6, 20)), 0.0)
    adj[:, :6] = np.triu(adj[:, :6], 1)  # acyclic among the regulators, no self edges
    adj[0, 1], adj[1, 10], adj[0, 10] = 1.0, 1.5, 0.0  # 0 -> 10 only through regulator 1
    prior = GRNPrior(torch.arange(6), 20, 4, torch.zeros(6, 20), n_steps=3, direct_init=torch.full((6,), -2.0))
    guide = GRNGuide(prior)
    with torch.no_grad():
        guide.logit.copy_(torch.as_tensor(np.where(adj != 0, 30.0, -30.0)))
        guide.weight_loc.copy_(torch.as_tensor(adj))
        guide.weight_raw_scale.fill_(-30.0)
    expected = propagate(adj, knockout=-2.0, n_steps=3)
    np.testing.assert_allclose(total_effects(guide, prior, n_samples=2), expected, atol=1e-4)
    names = [f"G{i:02d}" for i in range(20)]
    table = edge_table(guide, prior, names[:6], names, ci=0.9, threshold=None, n_samples=2).set_index(
        ["source", "target"]
    )
    assert table.loc[("G00", "G10"), "score"] < 1e-6  # no direct edge ...
    assert abs(expected[0, 10]) > 1.0  # ... but a total effect, through regulator 1
    assert table.loc[("G00", "G10"), "total"] == pytest.approx(expected[0, 10], abs=1e-3)
    assert table.loc[("G00", "G01"), "score"] > 1e4  # a certain edge of weight 1: the evidence is overwhelming
    with pytest.raises(ValueError, match="n_samples"):
        total_effects(guide, prior, n_samples=0)


def test_total_sd_is_the_posterior_sd_of_the_propagated_knockout():
    """One uncertain edge 0 -> 2 (inclusion p, weight N(m, s^2)): the total effect -incl * w has a known mean and sd."""
    prior = GRNPrior(torch.tensor([0, 1]), 3, 2, torch.zeros(2, 3), n_steps=2, direct_init=torch.full((2,), -1.0))
    guide = GRNGuide(prior)
    p, m, s = 0.6, 0.8, 0.5
    with torch.no_grad():
        guide.logit.fill_(-30.0)
        guide.logit[0, 2] = float(np.log(p / (1 - p)))
        guide.weight_loc.zero_()
        guide.weight_loc[0, 2] = m
        guide.weight_raw_scale.fill_(-30.0)
        guide.weight_raw_scale[0, 2] = float(np.log(np.expm1(s)))  # softplus^-1(s)
    mean, sd = total_effect_summary(guide, prior, n_samples=4000, seed=0)
    exact_sd = np.sqrt(p * (s**2 + m**2) - (p * m) ** 2)
    # Monte Carlo error of 4,000 draws: ~1.6% of the sd for the mean and ~1.5% for the sd; tolerances 4x that
    assert mean[0, 2] == pytest.approx(-p * m, abs=0.06 * exact_sd)
    assert sd[0, 2] == pytest.approx(exact_sd, rel=0.06)
    assert sd[1, 0] == pytest.approx(0.0, abs=1e-4)  # no edge out of regulator 1: its total effect is certain
    table = edge_table(guide, prior, ["G0", "G1"], ["G0", "G1", "G2"], ci=0.9, threshold=None, n_samples=4000)
    row = table.set_index(["source", "target"]).loc[("G0", "G2")]
    assert row["total_sd"] == pytest.approx(sd[0, 2], rel=1e-5)
    ranked = model_rankings(table)["pertpyro total (|total|/sd)"].set_index(["source", "target"])["score"]
    assert ranked.loc[("G0", "G2")] == pytest.approx(abs(mean[0, 2]) / sd[0, 2], rel=1e-5)


def test_model_rankings_beat_both_naive_rankings_on_the_simulator(grn_model, grn_screen):
    truth = grn_edges(grn_screen)
    regulators = list(grn_screen.uns["truth"]["grn"]["regulators"])
    rankings = {**model_rankings(grn_model.grn()), **naive_rankings(grn_screen, regulators)}
    table = compare_rankings(rankings, truth, testable_sources=regulators, k=20).set_index("method")
    assert list(table.index) == [*rankings, "random"]
    direct = table.loc["pertpyro direct (score)"]
    for naive in ("|correlation|", "|knockout shift|"):
        assert direct["auprc"] > table.loc[naive, "auprc"]
        assert direct["precision_at_k"] >= table.loc[naive, "precision_at_k"]
    assert direct["auprc"] >= 3 * table.loc["random", "auprc"]


def test_prior_network_is_weighed_by_the_data():
    """The learned prior inclusion of a prior network's edges is higher for true edges than for false ones."""
    adata = pertpyro.datasets.simulate(
        n_cells=600, n_genes=24, n_targets=6, n_combinations=0, grn=True, grn_density=0.15, n_truth_cells=0, seed=3
    )
    pertpyro.setup_anndata(adata, batch_key="batch")
    truth = grn_edges(adata)[["source", "target"]]
    regulators, genes = list(adata.uns["truth"]["grn"]["regulators"]), list(adata.var_names)
    listed = set(zip(truth["source"], truth["target"], strict=True))
    false = [(r, g) for r in regulators for g in genes if r != g and (r, g) not in listed][::5][: len(truth)]
    reliability = {}
    for name, prior in (("true", truth), ("false", pd.DataFrame(false, columns=["source", "target"]))):
        model = pertpyro.PerturbationModel(adata, grn=True, grn_prior=prior, latent_dim=2, n_hidden=16, seed=0)
        model.train(max_epochs=20, batch_size=200, lr=3e-2, seed=0, progress_bar=False, early_stopping=False)
        reliability[name] = model.grn_prior_reliability()
    assert reliability["true"]["n_prior_edges"] == len(truth)
    assert reliability["true"]["other_inclusion"] == pytest.approx(0.05)
    assert reliability["true"]["prior_edge_inclusion"] > reliability["false"]["prior_edge_inclusion"]
    assert reliability["true"]["odds_ratio"] > reliability["false"]["odds_ratio"]
    plain = pertpyro.PerturbationModel(adata, grn=True, latent_dim=2, n_hidden=16)
    plain.train(max_epochs=1, batch_size=200, progress_bar=False)
    assert np.isnan(plain.grn_prior_reliability()["prior_edge_inclusion"])
