"""Positive and negative controls of a screen: does the model find the known effects and stay silent on the nulls?

- **Negative controls** are null pseudo-targets (:func:`pertpyro.data.add_negative_controls`): control cells given
  a fake target label, whose true effect on every gene is zero. Reported: the fraction of their genes whose
  credible interval excludes zero at each level (nominal: ``1 - level``), and the hits they draw at the requested
  Bayesian FDR among all hits of the screen's single targets.
- **Positive controls** are the targets that are measured genes: a knockout must lower its own target's
  expression (the interval of the target's shift on itself lies below zero).

Both go into one table (:func:`control_table`), the check by which a screen's users judge an analysis method
(as sceptre, Barry et al. 2024, is judged).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.stats import norm

from pertpyro.causal._probability import exceedance_table
from pertpyro.data._controls import negative_control_labels
from pertpyro.data._registry import Registry
from pertpyro.posterior._intervals import (
    DEFAULT_LEVELS,
    IntervalCalibration,
    check_levels,
    interval_bounds,
    null_calibration,
)
from pertpyro.posterior._protocol import FittedModel

CONTROL_COLUMNS = ("kind", "label", "n_genes", "mean", "lower", "upper")


def positive_control_labels(registry: Registry, *, exclude: Sequence[str] = ()) -> list[str]:
    """Single targets of ``registry`` that are measured genes (the knockdown of each is a known effect)."""
    genes = set(registry.genes)
    return [t for t in registry.targets if t in genes and t not in set(exclude)]


def _bounds(draws: np.ndarray, level: float, calibration: IntervalCalibration | None) -> tuple[np.ndarray, ...]:
    if calibration is None:
        return interval_bounds(draws, level)
    return calibration.bounds(draws, level)


def null_pvalues(null_draws: np.ndarray, calibration: IntervalCalibration | None = None) -> np.ndarray:
    """Two-sided tail probability of zero under each null effect's (recalibrated) Normal posterior, flattened.

    For a calibrated model these are uniform on the null pseudo-targets' genes: the points of a QQ plot
    (:func:`pertpyro.plotting.null_qq`). ``p < 1 - level`` exactly when the interval of mass ``level`` excludes 0.
    """
    mean, sd = (calibration or IntervalCalibration()).sd(np.asarray(null_draws, dtype=np.float64))
    return (2 * norm.sf(np.abs(mean) / np.maximum(sd, 1e-12))).ravel()


def control_table(
    draws: np.ndarray,
    labels: Sequence[str],
    genes: Sequence[str],
    *,
    nulls: Sequence[str],
    positives: Sequence[str] = (),
    ci: float = 0.9,
    levels: Sequence[float] = DEFAULT_LEVELS,
    threshold: float = 0.1,
    fdr: float = 0.1,
    calibration: IntervalCalibration | None = None,
) -> pd.DataFrame:
    """One table of negative controls (null pseudo-targets) and positive controls (targets that are genes).

    Parameters
    ----------
    draws
        Posterior draws of the shifts, ``(samples, labels, genes)``, of every label hits are counted over (the
        screen's targets, nulls included, as ``model.ate_draws`` gives them).
    labels, genes
        Names of the label and gene axes of ``draws``.
    nulls
        Labels of the null pseudo-targets (among ``labels``).
    positives
        Targets whose knockdown of their own gene is checked (among ``labels`` and ``genes``).
    ci
        Mass of the interval in ``mean``/``lower``/``upper`` and of the positive controls' ``detected``.
    levels
        Masses at which the share of intervals excluding zero is reported (columns ``excludes 0 at 90%``, ...).
    threshold, fdr
        Hits are called by :func:`~pertpyro.causal.exceedance_table` (``P(|shift| > threshold)``, Bayesian FDR
        ``fdr``) over every label and gene of ``draws``.
    calibration
        Recalibration of the intervals and probabilities (``None``: raw posterior).

    Returns
    -------
    DataFrame, one row per null pseudo-target, one for all of them (``label = "all nulls"``) and one per positive
    control: ``kind`` (``negative``/``positive``), ``label``, ``n_genes``, ``mean``/``lower``/``upper`` (positive:
    the target's shift on itself), ``excludes 0 at L`` (share of genes whose interval of mass ``L`` excludes 0),
    ``hits`` (at ``fdr``), ``share of hits`` (of all hits of ``draws``) and ``detected`` (positive: the
    ``ci`` interval lies below 0).
    """
    level_values = check_levels(levels)
    draws = np.asarray(draws, dtype=np.float64)
    labels, genes = [str(x) for x in labels], [str(g) for g in genes]
    if draws.ndim != 3 or draws.shape[1:] != (len(labels), len(genes)):
        raise ValueError(f"draws must have shape (samples, {len(labels)}, {len(genes)}), got {draws.shape}.")
    missing = sorted(set(nulls) - set(labels)) + sorted(set(positives) - set(labels))
    if missing:
        raise ValueError(f"Labels {missing} have no draws.")
    not_genes = sorted(set(positives) - set(genes))
    if not_genes:
        raise ValueError(f"Positive controls must be measured genes; {not_genes} are not.")
    hits = exceedance_table(draws, labels, genes, threshold=threshold, fdr=fdr, calibration=calibration)
    hit = hits["hit"].to_numpy().reshape(len(labels), len(genes))
    n_hits = max(int(hit.sum()), 1)
    excludes = {}
    for level in level_values:
        lo, hi = _bounds(draws, float(level), calibration)
        excludes[level] = (lo > 0) | (hi < 0)  # (L, G)
    lo_ci, hi_ci = _bounds(draws, ci, calibration)
    mean = draws.mean(0)
    index = {label: i for i, label in enumerate(labels)}
    rows = []

    def exclusion(rows_: list[int], cols: slice | list[int]) -> dict[str, float]:
        r, c = np.asarray(rows_, dtype=np.int64), np.arange(len(genes), dtype=np.int64)[cols]
        return {f"excludes 0 at {lv:.0%}": float(excludes[lv][np.ix_(r, c)].mean()) for lv in level_values}

    null_rows = [index[n] for n in nulls]
    groups = [(n, [index[n]]) for n in nulls] + ([("all nulls", null_rows)] if len(null_rows) > 1 else [])
    for name, rows_ in groups:
        n_hit = int(hit[rows_].sum())
        rows.append(
            {
                "kind": "negative",
                "label": name,
                "n_genes": len(genes) * len(rows_),
                "mean": np.nan,
                "lower": np.nan,
                "upper": np.nan,
                **exclusion(rows_, slice(None)),
                "hits": n_hit,
                "share of hits": n_hit / n_hits,
                "detected": np.nan,
            }
        )
    gene_index = {g: j for j, g in enumerate(genes)}
    for target in positives:
        i, j = index[target], gene_index[target]
        rows.append(
            {
                "kind": "positive",
                "label": target,
                "n_genes": 1,
                "mean": float(mean[i, j]),
                "lower": float(lo_ci[i, j]),
                "upper": float(hi_ci[i, j]),
                **exclusion([i], [j]),
                "hits": int(hit[i, j]),
                "share of hits": int(hit[i, j]) / n_hits,
                "detected": bool(hi_ci[i, j] < 0),
            }
        )
    return pd.DataFrame(rows)


def controls_report(
    model: FittedModel,
    draws: np.ndarray,
    labels: Sequence[str],
    *,
    threshold: float = 0.1,
    fdr: float = 0.1,
    ci: float = 0.9,
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """The control table of a fitted model (what ``pertpyro evaluate`` writes), raw and calibrated on the nulls.

    Parameters
    ----------
    model
        A trained model; its training data name the null pseudo-targets (:func:`pertpyro.data.add_negative_controls`).
    draws
        Posterior draws ``(samples, labels, genes)`` of every single target of the model (``model.ate_draws``).
    labels
        Labels of ``draws``' second axis.
    threshold, fdr, ci
        As in :func:`control_table`.

    Returns
    -------
    The control table with an ``intervals`` column first: ``raw`` (or the model's own calibration, once
    ``model.calibrate()`` has run) and ``null-calibrated`` (:func:`~pertpyro.posterior.null_calibration`; each
    null's row scored with the calibration fitted on the other nulls, so that no null is scored by a calibration
    fitted on itself). And the null p-values of both, for :func:`pertpyro.plotting.null_qq`. Both empty when the
    model has neither nulls nor targets that are genes.
    """
    labels = [str(label) for label in labels]
    genes = list(model.registry.genes)
    nulls = [n for n in negative_control_labels(model.adata) if n in labels]
    positives = [p for p in positive_control_labels(model.registry, exclude=nulls) if p in labels]
    if not nulls and not positives:
        return pd.DataFrame(), {}
    draws = np.asarray(draws, dtype=np.float64)
    base = model.interval_calibration_

    def table_of(calibration: IntervalCalibration | None, nulls_: list[str], positives_: list[str]) -> pd.DataFrame:
        return control_table(
            draws,
            labels,
            genes,
            nulls=nulls_,
            positives=positives_,
            threshold=threshold,
            fdr=fdr,
            ci=ci,
            calibration=calibration,
        )

    name = "raw" if base is None else "calibrated"
    tables = [table_of(base, nulls, positives).assign(intervals=name)]
    null_draws = draws[:, [labels.index(n) for n in nulls]]
    pvalues = {name: null_pvalues(null_draws, base)} if nulls else {}
    if len(nulls) > 1:
        full = null_calibration(null_draws, base)
        table = table_of(full, nulls, positives)
        held_p = []
        for i, null in enumerate(nulls):
            others = null_calibration(np.delete(null_draws, i, axis=1), base)
            held = table_of(others, [null], [])
            table.loc[table["label"] == null] = held[held["label"] == null].to_numpy()
            held_p.append(null_pvalues(null_draws[:, [i]], others))
        each = table[table["label"].isin(nulls)]
        total = table["label"] == "all nulls"
        for column in [c for c in table.columns if c.startswith("excludes")]:
            table.loc[total, column] = each[column].mean()
        table.loc[total, ["hits", "share of hits"]] = each[["hits", "share of hits"]].sum().to_numpy()
        tables.append(table.assign(intervals=f"null-calibrated (scale {full.scale:.2f})"))
        pvalues["null-calibrated"] = np.concatenate(held_p)
    out = pd.concat(tables, ignore_index=True)
    return out[["intervals", *[c for c in out.columns if c != "intervals"]]], pvalues
