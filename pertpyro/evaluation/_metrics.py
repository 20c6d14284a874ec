"""Metrics that compare predicted with observed shifts (shifts: :mod:`pertpyro.data._statistics`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

METRIC_COLUMNS = ("pearson_all", "r2_all", "mse_all", "pearson_topk", "r2_topk", "mse_topk", "jaccard_topk")
"""Columns of :func:`shift_metrics`, in order."""


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    xc, yc = x - x.mean(), y - y.mean()
    denom = np.sqrt((xc * xc).sum() * (yc * yc).sum())
    if not np.isfinite(denom) or denom <= 0.0:
        return np.nan
    return float((xc * yc).sum() / denom)


def _r2(pred: np.ndarray, obs: np.ndarray) -> float:
    ss_tot = ((obs - obs.mean()) ** 2).sum()
    if ss_tot <= 0.0:
        return np.nan
    return float(1.0 - ((obs - pred) ** 2).sum() / ss_tot)


def _top_indices(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest ``|values|``; ties go to the earlier gene."""
    return np.argsort(-np.abs(values), kind="stable")[: min(k, len(values))]


def _jaccard(pred: np.ndarray, obs: np.ndarray, k: int) -> float:
    if np.ptp(pred) == 0.0:
        return np.nan  # a constant prediction ranks no gene above another
    a, b = set(_top_indices(pred, k).tolist()), set(_top_indices(obs, k).tolist())
    return len(a & b) / len(a | b)


def _aligned(predicted: pd.DataFrame, observed: pd.DataFrame) -> pd.DataFrame:
    missing = observed.columns.difference(predicted.columns)
    if len(missing):
        raise ValueError(f"Predicted shifts lack {len(missing)} observed genes, e.g. {list(missing[:5])}.")
    return predicted.reindex(index=observed.index, columns=observed.columns).astype(np.float64)


def shift_metrics(predicted: pd.DataFrame, observed: pd.DataFrame, *, top_k: int = 20) -> pd.DataFrame:
    """Per-perturbation agreement of predicted with observed shifts.

    For each perturbation (row of ``observed``), over all genes and over its ``top_k`` genes with the largest
    ``|observed shift|`` (ties go to the earlier gene):

    - ``pearson``: Pearson correlation of predicted and observed shift (Pearson-delta); NaN when either is constant,
      e.g. the no-change baseline.
    - ``r2``: coefficient of determination ``1 - sum (obs - pred)^2 / sum (obs - mean obs)^2``; NaN when the
      observed shift is constant.
    - ``mse``: mean of ``(obs - pred)^2``.
    - ``jaccard_topk``: :func:`topk_jaccard` of the top-``k`` genes by ``|shift|``.

    Parameters
    ----------
    predicted
        Predicted shifts, perturbation x gene; rows missing or NaN give NaN metrics.
    observed
        Observed shifts, perturbation x gene (:func:`observed_shift`).
    top_k
        Number of top genes.

    Returns
    -------
    DataFrame indexed by perturbation with the columns :data:`METRIC_COLUMNS`.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be positive, got {top_k}.")
    pred_all = _aligned(predicted, observed)
    rows = []
    for label in observed.index:
        obs = observed.loc[label].to_numpy(dtype=np.float64)
        pred = pred_all.loc[label].to_numpy()
        if not (np.isfinite(pred).all() and np.isfinite(obs).all()):
            rows.append(dict.fromkeys(METRIC_COLUMNS, np.nan))
            continue
        top = _top_indices(obs, top_k)
        rows.append(
            {
                "pearson_all": _pearson(pred, obs),
                "r2_all": _r2(pred, obs),
                "mse_all": float(np.mean((obs - pred) ** 2)),
                "pearson_topk": _pearson(pred[top], obs[top]),
                "r2_topk": _r2(pred[top], obs[top]),
                "mse_topk": float(np.mean((obs[top] - pred[top]) ** 2)),
                "jaccard_topk": _jaccard(pred, obs, top_k),
            }
        )
    return pd.DataFrame(rows, index=pd.Index(observed.index, name="perturbation"), columns=list(METRIC_COLUMNS))


def topk_jaccard(
    predicted: pd.DataFrame | np.ndarray, observed: pd.DataFrame | np.ndarray, *, k: int = 20
) -> pd.Series | float:
    """Jaccard overlap of the top-``k`` genes by ``|shift|`` in the prediction and the observation.

    Parameters
    ----------
    predicted
        Predicted shifts: a DataFrame (perturbation x gene) or one 1-d array.
    observed
        Observed shifts of the same shape (DataFrame rows are matched by label, columns by gene).
    k
        Number of top genes.

    Returns
    -------
    Series per perturbation for DataFrames, a float for 1-d arrays. NaN for a constant prediction.
    """
    if isinstance(observed, pd.DataFrame):
        pred = _aligned(pd.DataFrame(predicted), observed)
        values = [
            _jaccard(pred.loc[lab].to_numpy(), observed.loc[lab].to_numpy(dtype=np.float64), k)
            if np.isfinite(pred.loc[lab].to_numpy()).all()
            else np.nan
            for lab in observed.index
        ]
        return pd.Series(values, index=observed.index, name="jaccard_topk")
    pred, obs = np.asarray(predicted, dtype=np.float64), np.asarray(observed, dtype=np.float64)
    if pred.shape != obs.shape or pred.ndim != 1:
        raise ValueError(f"Expected two 1-d arrays of the same shape, got {pred.shape} and {obs.shape}.")
    return _jaccard(pred, obs, k)


def summarise(per_pert: pd.DataFrame, strong: Sequence[str] | None = None) -> pd.DataFrame:
    """Average per-perturbation metrics over all perturbations and over the strong ones.

    Means skip NaN values (a metric undefined for every perturbation stays NaN); ``n_perturbations`` counts the rows
    averaged and ``n_predicted`` those with a finite ``mse_all`` (i.e. a prediction), so a method that predicts only
    some labels is visible.

    Parameters
    ----------
    per_pert
        Output of :func:`shift_metrics`.
    strong
        Labels of the strong subset; ``None`` gives the ``"all"`` row only. Labels absent from ``per_pert`` are
        ignored with a log message.

    Returns
    -------
    DataFrame indexed by subset (``"all"``, ``"strong"``).
    """
    metric_cols = [c for c in per_pert.columns if c in METRIC_COLUMNS]
    subsets = {"all": list(per_pert.index)}
    if strong is not None:
        strong = list(strong)
        absent = [lab for lab in strong if lab not in per_pert.index]
        if absent:
            logger.info("Strong labels without test cells are left out of the 'strong' subset: %s", absent)
        subsets["strong"] = [lab for lab in strong if lab in per_pert.index]
    rows = {}
    for name, members in subsets.items():
        sub = per_pert.loc[members, metric_cols]
        row = {
            "n_perturbations": len(members),
            "n_predicted": int(np.isfinite(sub["mse_all"]).sum()) if "mse_all" in sub else len(members),
        }
        row.update(sub.mean(axis=0, skipna=True).to_dict() if len(sub) else dict.fromkeys(metric_cols, np.nan))
        rows[name] = row
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "subset"
    return out
