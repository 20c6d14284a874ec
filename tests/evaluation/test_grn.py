"""Scoring a ranking of regulator -> gene pairs against a reference network."""

import pandas as pd
import pytest

from pertpyro.evaluation import compare_rankings, edge_scores

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
