"""Scoring an inferred gene-regulatory network: against a known network, against baselines, and from the data.

- :func:`edge_scores`: AUROC / AUPRC of scored (source, target) pairs against a reference edge list, over the
  *testable* pairs (by default the scored pairs whose source is a source of the reference: a TF the reference
  knows nothing about cannot be scored against it).
- Baselines scored the same way: :func:`correlation_baseline` (``|corr|`` of log-normalised expression of source
  and target gene over all cells, or over control cells only: the natural variation without the knockouts; needs
  the source to be a measured gene), :func:`knockout_shift_baseline`
  (``|mean shift|`` of the target in the source's knockout cells: needs the source to be perturbed) and
  :func:`random_baseline` (expected AUPRC = prevalence of true edges).
- :func:`compare_rankings`: those metrics and precision at the top ``k`` pairs for several rankings side by side
  (:func:`model_rankings` of a ``model.grn()`` table, :func:`naive_rankings` of the cells) with the random one.
- :func:`enrichment`: odds ratio and one-sided Fisher p-value of reference edges among predicted edges.
- :func:`causalbench_stats`: the data-driven statistics of CausalBench (Chevalley et al. 2023) on the
  interventional data: for each predicted edge whose source was knocked out, a Mann-Whitney U test of the target's
  expression in the source's knockout cells versus control cells; the mean Wasserstein distance of those two
  distributions over predicted edges; and the false-omission rate, the fraction of random *non-predicted* pairs
  whose test is significant.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from scipy import stats
from sklearn.metrics import average_precision_score, roc_auc_score

from pertpyro.data._registry import get_counts, get_registry, perturbation_labels
from pertpyro.data._statistics import log_normalise


def _pair_index(frame: pd.DataFrame) -> pd.MultiIndex:
    return pd.MultiIndex.from_arrays([frame["source"].astype(str), frame["target"].astype(str)])


def edge_scores(
    scores: pd.DataFrame,
    reference: pd.DataFrame,
    *,
    score: str = "score",
    testable_sources: Sequence[str] | None = None,
    k: int = 50,
) -> dict[str, float]:
    """AUROC and AUPRC of a scored pair list against a reference network, over the testable pairs.

    Parameters
    ----------
    scores
        ``DataFrame(source, target, <score>)``: every candidate pair with its score (e.g. ``model.grn()``). Missing
        (NaN) scores rank lowest.
    reference
        ``DataFrame(source, target)`` of true edges (simulator truth, CollecTRI, ...).
    score
        Column of ``scores`` to rank by.
    testable_sources
        Sources whose pairs are scored; default: the reference's sources (simulator truth: pass all regulators).
    k
        Early precision: the fraction of reference edges among the ``k`` highest-scored pairs (ties broken by the
        order of ``scores``).

    Returns
    -------
    ``auroc``, ``auprc``, ``prevalence`` (the random baseline's expected AUPRC and precision at ``k``),
    ``auprc_ratio`` (AUPRC / prevalence), ``precision_at_k``, ``n_pairs``, ``n_edges``. NaN metrics when there is
    no positive or no negative pair.
    """
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}.")
    if not {"source", "target", score} <= set(scores.columns):
        raise ValueError(f"scores needs columns 'source', 'target' and {score!r}.")
    if not {"source", "target"} <= set(reference.columns):
        raise ValueError("reference needs columns 'source' and 'target'.")
    sources = set(reference["source"].astype(str)) if testable_sources is None else set(map(str, testable_sources))
    table = scores[scores["source"].astype(str).isin(sources)]
    y = _pair_index(table).isin(_pair_index(reference))
    s = table[score].to_numpy(dtype=np.float64)
    s = np.where(np.isnan(s), -np.inf, s)
    n_pos = int(y.sum())
    out = {"n_pairs": float(len(y)), "n_edges": float(n_pos), "prevalence": n_pos / max(len(y), 1)}
    if 0 < n_pos < len(y):
        s = np.where(np.isinf(s), np.nanmin(s[np.isfinite(s)]) - 1.0 if np.isfinite(s).any() else 0.0, s)
        out["auroc"] = float(roc_auc_score(y, s))
        out["auprc"] = float(average_precision_score(y, s))
        top = np.argsort(-s, kind="stable")[: min(int(k), len(s))]
        out["precision_at_k"] = float(np.mean(y[top]))
    else:
        out["auroc"] = out["auprc"] = out["precision_at_k"] = float("nan")
    out["auprc_ratio"] = out["auprc"] / out["prevalence"] if out["prevalence"] > 0 else float("nan")
    return out


def compare_rankings(
    rankings: Mapping[str, pd.DataFrame],
    reference: pd.DataFrame,
    *,
    testable_sources: Sequence[str] | None = None,
    k: int = 50,
) -> pd.DataFrame:
    """:func:`edge_scores` of several rankings of the same pairs, one row each, with the random baseline.

    Parameters
    ----------
    rankings
        ``name -> DataFrame(source, target, score)`` (e.g. :func:`model_rankings` and :func:`naive_rankings`).
    reference, testable_sources, k
        As in :func:`edge_scores`.

    Returns
    -------
    DataFrame ``method, auroc, auprc, auprc_ratio, precision_at_k, prevalence, n_pairs, n_edges``; the last row,
    ``random``, holds the expected AUROC (0.5), AUPRC and precision at ``k`` (the prevalence) of a random ranking.
    """
    if not rankings:
        raise ValueError("compare_rankings needs at least one ranking.")
    rows = []
    for name, frame in rankings.items():
        r = edge_scores(frame, reference, score="score", testable_sources=testable_sources, k=k)
        rows.append({"method": name, **r})
    last = rows[-1]
    rows.append(
        {
            "method": "random",
            "auroc": 0.5,
            "auprc": last["prevalence"],
            "auprc_ratio": 1.0,
            "precision_at_k": last["prevalence"],
            "prevalence": last["prevalence"],
            "n_pairs": last["n_pairs"],
            "n_edges": last["n_edges"],
        }
    )
    columns = ["method", "auroc", "auprc", "auprc_ratio", "precision_at_k", "prevalence", "n_pairs", "n_edges"]
    return pd.DataFrame(rows)[columns]


def model_rankings(edges: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The two rankings of a ``model.grn()`` table: direct edges (``score``) and total effects (``|total| / sd``).

    The total effect is ranked by its posterior mean in units of its posterior sd (``|total| / total_sd``): the mean
    alone favours the large, noisy logit changes of lowly expressed genes.
    """
    if not {"source", "target", "score", "total", "total_sd"} <= set(edges.columns):
        raise ValueError("edges needs the columns of model.grn(): 'source', 'target', 'score', 'total', 'total_sd'.")
    pairs = edges[["source", "target"]]
    total = edges["total"].abs().to_numpy() / np.maximum(edges["total_sd"].to_numpy(), 1e-12)
    return {
        "pertpyro direct (score)": pairs.assign(score=edges["score"].to_numpy()),
        "pertpyro total (|total|/sd)": pairs.assign(score=total),
    }


def naive_rankings(adata: AnnData, sources: Sequence[str]) -> dict[str, pd.DataFrame]:
    """The two naive rankings a network has to beat: :func:`correlation_baseline` and :func:`knockout_shift_baseline`."""
    return {
        "|correlation|": correlation_baseline(adata, sources),
        "|knockout shift|": knockout_shift_baseline(adata, sources),
    }


def _log_normalised(adata: AnnData) -> np.ndarray:
    registry = get_registry(adata)
    counts = get_counts(adata, registry)
    return log_normalise(sp.csr_matrix(counts).toarray() if sp.issparse(counts) else np.asarray(counts))


def _pairs_frame(sources: Sequence[str], genes: Sequence[str], values: np.ndarray) -> pd.DataFrame:
    src = np.repeat(np.asarray(sources, dtype=object), len(genes))
    dst = np.tile(np.asarray(genes, dtype=object), len(sources))
    frame = pd.DataFrame({"source": src, "target": dst, "score": values.ravel()})
    return frame[frame["source"] != frame["target"]].reset_index(drop=True)


def correlation_baseline(adata: AnnData, sources: Sequence[str], *, control_only: bool = False) -> pd.DataFrame:
    """``|Pearson correlation|`` of log-normalised expression of each source gene with every gene, over all cells.

    Parameters
    ----------
    adata
        Cells set up with :func:`pertpyro.setup_anndata`.
    sources
        Source genes; sources that are not measured genes get NaN scores (they cannot be scored from expression).
    control_only
        Correlate over the control cells only: the genes' natural covariation, without the covariation that the
        knockouts of other genes induce (over all cells, a knockout that moves a regulator and its targets
        together makes them correlate).
    """
    registry = get_registry(adata)
    genes = list(registry.genes)
    x = _log_normalised(adata)
    if control_only:
        x = x[perturbation_labels(adata, registry) == registry.control]
        if len(x) < 3:
            raise ValueError("correlation_baseline(control_only=True) needs at least 3 control cells.")
    x = (x - x.mean(0)) / np.maximum(x.std(0), 1e-12)
    index = pd.Index(genes).get_indexer(list(sources))
    corr = np.full((len(sources), len(genes)), np.nan)
    ok = index >= 0
    corr[ok] = np.abs(x[:, index[ok]].T @ x / x.shape[0])
    return _pairs_frame(sources, genes, corr)


def knockout_shift_baseline(adata: AnnData, sources: Sequence[str]) -> pd.DataFrame:
    """``|mean log-normalised expression in the source's single-knockout cells - control mean|`` per gene.

    Sources without single-knockout cells in ``adata`` get NaN scores. Direct and indirect effects are not told
    apart: this is the natural interventional baseline a network model has to beat.
    """
    registry = get_registry(adata)
    genes = list(registry.genes)
    labels = perturbation_labels(adata, registry)
    x = _log_normalised(adata)
    control = x[labels == registry.control].mean(0)
    out = np.full((len(sources), len(genes)), np.nan)
    for i, source in enumerate(sources):
        rows = labels == source
        if rows.any():
            out[i] = np.abs(x[rows].mean(0) - control)
    return _pairs_frame(sources, genes, out)


def random_baseline(pairs: pd.DataFrame, *, seed: int = 0) -> pd.DataFrame:
    """Uniform random scores on the pairs of ``pairs`` (its ``source``, ``target``)."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"source": pairs["source"], "target": pairs["target"], "score": rng.random(len(pairs))})


def enrichment(predicted: pd.DataFrame, candidates: pd.DataFrame, reference: pd.DataFrame) -> dict[str, float]:
    """Are reference edges enriched among predicted edges, relative to all candidate pairs?

    Parameters
    ----------
    predicted
        Predicted edges ``(source, target)`` (a subset of ``candidates``).
    candidates
        All testable pairs ``(source, target)``.
    reference
        Reference edges ``(source, target)``.

    Returns
    -------
    ``odds_ratio`` and one-sided (greater) Fisher exact ``p_value`` of the 2x2 table predicted x in-reference,
    with the four counts ``tp``, ``fp``, ``fn``, ``tn``.
    """
    cand = _pair_index(candidates)
    in_ref = cand.isin(_pair_index(reference))
    in_pred = cand.isin(_pair_index(predicted))
    tp = int((in_pred & in_ref).sum())
    fp = int((in_pred & ~in_ref).sum())
    fn = int((~in_pred & in_ref).sum())
    tn = int((~in_pred & ~in_ref).sum())
    odds, p = stats.fisher_exact([[tp, fp], [fn, tn]], alternative="greater")
    return {"odds_ratio": float(odds), "p_value": float(p), "tp": tp, "fp": fp, "fn": fn, "tn": tn}


def causalbench_stats(
    adata: AnnData,
    predicted: pd.DataFrame,
    *,
    n_negatives: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, float]:
    """CausalBench-style statistics of predicted edges on interventional data (module docstring).

    Parameters
    ----------
    adata
        Cells (set up with :func:`pertpyro.setup_anndata`) with single-target knockouts and controls; use held-out
        cells where possible.
    predicted
        Predicted edges ``(source, target)``; only those whose source has single-knockout cells and whose target is
        a measured gene are tested.
    n_negatives
        Random non-predicted (source, gene) pairs, with a knocked-out source, drawn for the false-omission rate.
    alpha
        Significance level of the Mann-Whitney tests.
    seed
        Seed of the draw of negatives.

    Returns
    -------
    ``n_tested``, ``frac_significant`` (predicted edges with p < alpha: CausalBench's precision proxy),
    ``mean_wasserstein`` (over tested predicted edges), ``false_omission_rate`` (significant fraction of the
    random non-predicted pairs), ``n_negatives``.
    """
    registry = get_registry(adata)
    genes = list(registry.genes)
    g_index = {g: j for j, g in enumerate(genes)}
    labels = perturbation_labels(adata, registry)
    x = _log_normalised(adata)
    control = x[labels == registry.control]
    if len(control) == 0:
        raise ValueError("causalbench_stats needs control cells.")
    perturbed = sorted(set(labels.tolist()) - {registry.control})
    singles = [p for p in perturbed if registry.delimiter not in p]

    def test(source: str, target: str) -> tuple[float, float]:
        a, b = x[labels == source, g_index[target]], control[:, g_index[target]]
        if np.all(a == a[0]) and np.all(b == a[0]):
            return 1.0, 0.0
        return float(stats.mannwhitneyu(a, b).pvalue), float(stats.wasserstein_distance(a, b))

    pred = predicted[predicted["source"].isin(singles) & predicted["target"].isin(g_index)]
    pred = pred[pred["source"] != pred["target"]]
    results = np.array([test(s, t) for s, t in zip(pred["source"], pred["target"], strict=True)]).reshape(-1, 2)
    rng = np.random.default_rng(seed)
    taken = set(zip(predicted["source"].astype(str), predicted["target"].astype(str), strict=True))
    negatives: list[tuple[str, str]] = []
    for _ in range(20 * n_negatives):  # rejection sampling of distinct non-predicted pairs
        if len(negatives) >= n_negatives or not singles:
            break
        pair = (singles[rng.integers(len(singles))], genes[rng.integers(len(genes))])
        if pair[0] != pair[1] and pair not in taken:
            taken.add(pair)
            negatives.append(pair)
    neg_p = np.array([test(s, t)[0] for s, t in negatives])
    return {
        "n_tested": float(len(results)),
        "frac_significant": float(np.mean(results[:, 0] < alpha)) if len(results) else float("nan"),
        "mean_wasserstein": float(np.mean(results[:, 1])) if len(results) else float("nan"),
        "false_omission_rate": float(np.mean(neg_p < alpha)) if len(neg_p) else float("nan"),
        "n_negatives": float(len(neg_p)),
    }
