"""Scoring a ranking of regulator -> gene pairs against a reference network."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from pertpyro import setup_anndata
from pertpyro.evaluation import compare_rankings, correlation_baseline, edge_scores

REFERENCE = pd.DataFrame({"source": ["a", "a", "b"], "target": ["x", "y", "x"]})
PAIRS = pd.DataFrame({"source": ["a", "a", "a", "b", "b", "b"], "target": ["x", "y", "z", "x", "y", "z"]})


def test_precision_at_k_counts_reference_edges_among_the_top_pairs():
    perfect = PAIRS.assign(score=[6.0, 5.0, 1.0, 4.0, 2.0, 3.0])
    worst = PAIRS.assign(score=[1.0, 2.0, 6.0, 3.0, 5.0, 4.0])
    best = edge_scores(perfect, REFERENCE, k=3)
    assert best["precision_at_k"] == 1.0
    assert best["auprc"] == pytest.approx(1.0)
    assert edge_scores(worst, REFERENCE, k=3)["precision_at_k"] == 0.0
    assert edge_scores(worst, REFERENCE, k=4)["precision_at_k"] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="k must"):
        edge_scores(perfect, REFERENCE, k=0)


def test_compare_rankings_lists_each_ranking_and_the_random_one():
    perfect = PAIRS.assign(score=[6.0, 5.0, 1.0, 4.0, 2.0, 3.0])
    worst = PAIRS.assign(score=[1.0, 2.0, 6.0, 3.0, 5.0, 4.0])
    table = compare_rankings({"perfect": perfect, "worst": worst}, REFERENCE, k=3).set_index("method")
    assert list(table.index) == ["perfect", "worst", "random"]
    assert table.loc["perfect", "precision_at_k"] == 1.0
    assert table.loc["worst", "auprc"] < table.loc["random", "auprc"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="at least one"):
        compare_rankings({}, REFERENCE)


def _covarying_screen():
    """Control cells: g0 and g1 covary naturally; knockout of 'K' lowers g0 and g2 together (and not g1)."""
    rng = np.random.default_rng(0)
    labels = np.array(["control"] * 300 + ["K"] * 300)
    natural = rng.normal(0.0, 0.5, size=len(labels))
    mean = np.full((len(labels), 60), 20.0)  # many genes: normalising by the library barely couples them
    control = labels == "control"
    mean[control, 0] *= np.exp(natural[control])
    mean[control, 1] *= np.exp(natural[control])
    mean[~control, 0] *= 0.1
    mean[~control, 2] *= 0.1
    adata = ad.AnnData(rng.poisson(mean).astype(np.float32))
    adata.obs_names = [f"c{i}" for i in range(len(labels))]
    adata.var_names = [f"g{j}" for j in range(mean.shape[1])]
    adata.obs["perturbation"] = labels
    setup_anndata(adata)
    return adata


def test_correlation_baseline_over_control_cells_sees_only_the_natural_covariation():
    adata = _covarying_screen()
    reference_all = pd.DataFrame({"source": ["g0"], "target": ["g2"]})  # co-moved by the knockout
    reference_natural = pd.DataFrame({"source": ["g0"], "target": ["g1"]})  # covary among control cells
    over_all = correlation_baseline(adata, ["g0"])
    over_control = correlation_baseline(adata, ["g0"], control_only=True)
    assert edge_scores(over_all, reference_all, k=1)["precision_at_k"] == 1.0
    assert edge_scores(over_control, reference_natural, k=1)["precision_at_k"] == 1.0
    assert edge_scores(over_control, reference_all, k=1)["precision_at_k"] == 0.0
    with pytest.raises(ValueError, match="3 control cells"):
        correlation_baseline(adata[adata.obs["perturbation"] == "K"].copy(), ["g0"], control_only=True)
