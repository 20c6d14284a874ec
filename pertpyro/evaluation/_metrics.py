"""Expression shifts and the metrics that compare predicted with observed shifts.

Every shift lives on the scale of DESIGN.md §4: mean of ``log1p(1e4 * x / sum_g x)`` per cell. A *shift* of a
perturbation label is the mean over its cells minus the mean over a reference: control cells (the default) or all
perturbed, non-control cells (Systema's reference, which stops a method from scoring by predicting the shift that
all perturbations share).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from pertpyro.data._registry import get_counts, get_registry, perturbation_labels

logger = logging.getLogger(__name__)

TARGET_SUM = 1e4
"""Library size every cell is scaled to before ``log1p``."""

CHUNK_SIZE = 8192
"""Cells log-normalised at once when averaging over a matrix."""

METRIC_COLUMNS = ("pearson_all", "r2_all", "mse_all", "pearson_topk", "r2_topk", "mse_topk", "jaccard_topk")
"""Columns of :func:`shift_metrics`, in order."""

REFERENCES = ("control", "perturbed")


def log_normalise(
    X: np.ndarray | sp.spmatrix | sp.sparray, *, target_sum: float = TARGET_SUM
) -> np.ndarray | sp.csr_matrix:
    """``log1p(target_sum * x / sum_g x)`` per cell (row).

    A sparse input stays sparse: only its stored values are transformed (``log1p(0) = 0``), so nothing is densified.
    To average a large matrix without holding its log-normalised copy, use :func:`mean_expression`, which works
    in chunks of rows.

    Parameters
    ----------
    X
        Counts, cells x genes, dense or sparse.
    target_sum
        Library size each cell is scaled to.

    Returns
    -------
    ``float64`` array of the same shape; CSR when ``X`` is sparse. Cells with zero total counts give a row of zeros.
    """
    if sp.issparse(X):
        X = sp.csr_matrix(X, dtype=np.float64, copy=True)
        totals = np.asarray(X.sum(axis=1)).ravel()
        scale = np.divide(target_sum, totals, out=np.zeros_like(totals), where=totals > 0)
        X.data *= np.repeat(scale, np.diff(X.indptr))
        np.log1p(X.data, out=X.data)
        return X
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"log_normalise expects a cells x genes matrix, got an array of shape {X.shape}.")
    totals = X.sum(axis=1, keepdims=True)
    scale = np.divide(target_sum, totals, out=np.zeros_like(totals), where=totals > 0)
    return np.log1p(X * scale)


def _dense(x: np.ndarray | sp.spmatrix) -> np.ndarray:
    return x.toarray() if sp.issparse(x) else np.asarray(x)


@dataclass(frozen=True)
class LabelMoments:
    """Per-label mean, variance (``ddof=1``) and cell count of log-normalised expression.

    ``mean`` and ``var`` are DataFrames (labels x genes); ``n`` is a Series of cell counts. ``var`` is NaN for a
    label with a single cell.
    """

    mean: pd.DataFrame
    var: pd.DataFrame
    n: pd.Series


def label_moments(
    data: AnnData | np.ndarray | sp.spmatrix,
    labels: Sequence[str] | np.ndarray | pd.Series | None = None,
    *,
    chunk_size: int = CHUNK_SIZE,
) -> LabelMoments:
    """Mean and variance of log-normalised expression per label, accumulated over chunks of cells.

    Parameters
    ----------
    data
        AnnData set up with :func:`pertpyro.setup_anndata` (counts read from the registered layer), or a counts
        matrix (cells x genes).
    labels
        One label per cell; for an AnnData, ``None`` means the registered perturbation labels.
    chunk_size
        Cells log-normalised at once (only one chunk is ever densified).

    Returns
    -------
    :class:`LabelMoments`, labels in sorted order.
    """
    if isinstance(data, AnnData):
        registry = get_registry(data)
        counts = get_counts(data, registry)
        if labels is None:
            labels = perturbation_labels(data, registry)
        genes = pd.Index(data.var_names.astype(str), name="gene")
    else:
        if labels is None:
            raise ValueError("labels are required when data is a matrix rather than a registered AnnData.")
        counts = data
        genes = pd.Index([str(g) for g in range(data.shape[1])], name="gene")
    labels = np.asarray(labels, dtype=object).astype(str)
    n_cells, n_genes = counts.shape
    if labels.shape != (n_cells,):
        raise ValueError(f"Got {labels.shape[0]} labels for {n_cells} cells.")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}.")
    levels, codes = np.unique(labels, return_inverse=True)
    sums = np.zeros((len(levels), n_genes))
    sumsq = np.zeros((len(levels), n_genes))
    for start in range(0, n_cells, chunk_size):
        stop = min(start + chunk_size, n_cells)
        block = log_normalise(counts[start:stop])
        chunk_codes = codes[start:stop]
        indicator = sp.csr_matrix(
            (np.ones(stop - start), (chunk_codes, np.arange(stop - start))), shape=(len(levels), stop - start)
        )
        squared = block.multiply(block) if sp.issparse(block) else block * block
        sums += _dense(indicator @ block)
        sumsq += _dense(indicator @ squared)
    n = np.bincount(codes, minlength=len(levels)).astype(np.float64)
    mean = sums / n[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        var = np.maximum(sumsq - n[:, None] * mean**2, 0.0) / (n[:, None] - 1.0)
    var[n < 2] = np.nan
    index = pd.Index(levels.tolist(), name="perturbation")
    return LabelMoments(
        mean=pd.DataFrame(mean, index=index, columns=genes),
        var=pd.DataFrame(var, index=index, columns=genes),
        n=pd.Series(n.astype(np.int64), index=index, name="n_cells"),
    )


def mean_expression(
    data: AnnData | np.ndarray | sp.spmatrix,
    labels: Sequence[str] | np.ndarray | pd.Series | None = None,
    *,
    chunk_size: int = CHUNK_SIZE,
) -> pd.DataFrame:
    """Mean log-normalised expression per label.

    Parameters
    ----------
    data
        AnnData set up with :func:`pertpyro.setup_anndata`, or a counts matrix (cells x genes).
    labels
        One label per cell; for an AnnData, ``None`` means the registered perturbation labels.
    chunk_size
        Cells log-normalised at once.

    Returns
    -------
    DataFrame, sorted labels x genes.
    """
    return label_moments(data, labels, chunk_size=chunk_size).mean


def shift_from_moments(
    moments: LabelMoments, control: str, *, reference: str = "control", labels: Sequence[str] | None = None
) -> pd.DataFrame:
    """Shifts of labels from precomputed :class:`LabelMoments` (see :func:`observed_shift`)."""
    if reference not in REFERENCES:
        raise ValueError(f"reference must be one of {REFERENCES}, got {reference!r}.")
    perturbed = [lab for lab in moments.mean.index if lab != control]
    if labels is None:
        labels = perturbed
    unknown = [lab for lab in labels if lab not in moments.mean.index or lab == control]
    if unknown:
        raise ValueError(f"No perturbed cells with labels {unknown}; labels with cells: {perturbed}.")
    if reference == "control":
        if control not in moments.mean.index:
            raise ValueError(f"No control cells (label {control!r}): the control reference is undefined.")
        ref = moments.mean.loc[control]
    else:
        if not perturbed:
            raise ValueError("No perturbed cells: the 'perturbed' reference is undefined.")
        weights = moments.n.loc[perturbed].to_numpy(dtype=np.float64)
        ref = pd.Series(weights @ moments.mean.loc[perturbed].to_numpy() / weights.sum(), index=moments.mean.columns)
    return moments.mean.loc[list(labels)] - ref


def observed_shift(
    adata: AnnData,
    *,
    reference: str = "control",
    labels: Sequence[str] | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> pd.DataFrame:
    """Observed mean shift of every perturbation label.

    Parameters
    ----------
    adata
        AnnData set up with :func:`pertpyro.setup_anndata` (typically the test cells).
    reference
        ``"control"``: minus the mean of control cells. ``"perturbed"``: minus the mean of all perturbed, non-control
        cells pooled (each cell weighs the same, so a label weighs by its cell count).
    labels
        Labels to return (default: every non-control label with cells, sorted).
    chunk_size
        Cells log-normalised at once.

    Returns
    -------
    DataFrame, perturbation x gene.
    """
    registry = get_registry(adata)
    moments = label_moments(adata, chunk_size=chunk_size)
    return shift_from_moments(moments, registry.control, reference=reference, labels=labels)


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


def strong_perturbations(adata: AnnData, *, threshold: float = 2.0, chunk_size: int = CHUNK_SIZE) -> list[str]:
    """Perturbations whose observed shift clearly exceeds its sampling noise.

    The signal-to-noise ratio of label ``p`` is ``sum_g d_pg^2 / sum_g (s2_pg / n_p + s2_cg / n_c)``: the squared
    norm of its observed shift versus control, over the value that squared norm has in expectation when the label
    has no effect (the sampling variances of the two means, ``s2`` with ``ddof=1``). It is about 1 for a null
    perturbation whatever its cell count, unlike the raw norm, which is largest for the labels with fewest cells.

    Parameters
    ----------
    adata
        AnnData set up with :func:`pertpyro.setup_anndata` (the test cells).
    threshold
        Minimum signal-to-noise ratio (on Papalexi's test split the six strong knockouts STAT1, JAK2, IFNGR1,
        IFNGR2, SMAD4, IRF1 have 2.6-7.1 and every other label at most 1.3).
    chunk_size
        Cells log-normalised at once.

    Returns
    -------
    Sorted labels with ratio ``>= threshold`` (labels with one cell, whose variance is unknown, are excluded).
    """
    registry = get_registry(adata)
    moments = label_moments(adata, chunk_size=chunk_size)
    return strong_from_moments(moments, registry.control, threshold=threshold)


def strong_from_moments(moments: LabelMoments, control: str, *, threshold: float = 2.0) -> list[str]:
    """:func:`strong_perturbations` from precomputed :class:`LabelMoments`."""
    if control not in moments.mean.index:
        raise ValueError(f"No control cells (label {control!r}): cannot rank perturbations by effect.")
    shift = shift_from_moments(moments, control)
    noise_c = moments.var.loc[control] / moments.n.loc[control]
    noise = moments.var.loc[shift.index].div(moments.n.loc[shift.index], axis=0) + noise_c
    ratio = (shift**2).sum(axis=1) / noise.sum(axis=1, skipna=False)
    return sorted(ratio.index[ratio.to_numpy() >= threshold].tolist())


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
