"""Log-normalisation and per-label statistics of a screen's counts (chunked, sparse stays sparse).

Every shift lives on one scale: the mean of ``log1p(1e4 * x / sum_g x)`` per cell. A *shift* of a perturbation
label is the mean over its cells minus the mean over a reference: control cells (the default) or all perturbed,
non-control cells (Systema's reference, which stops a method from scoring by predicting the shift that all
perturbations share).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, overload

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata import AnnData

from pertpyro.data._registry import get_counts, get_registry, perturbation_labels

Reference = Literal["control", "perturbed"]
"""What a shift is measured against: control cells, or all perturbed cells pooled (Systema's reference)."""

ArrayLike = np.ndarray | sp.spmatrix | sp.sparray | torch.Tensor

TARGET_SUM = 1e4
"""Library size every cell is scaled to before ``log1p``."""

CHUNK_SIZE = 8192
"""Cells log-normalised at once when averaging over a matrix."""

STRONG_SIGNAL_TO_NOISE = 3.0
"""What "strong" means everywhere in pertpyro: a label whose observed shift has a signal-to-noise ratio of at least
this (:func:`strong_perturbations`), computed on training cells."""

REFERENCES: tuple[Reference, ...] = ("control", "perturbed")


@overload
def log_normalise(X: torch.Tensor, *, target_sum: float = ...) -> torch.Tensor: ...
@overload
def log_normalise(X: np.ndarray, *, target_sum: float = ...) -> np.ndarray: ...
@overload
def log_normalise(X: sp.spmatrix | sp.sparray, *, target_sum: float = ...) -> sp.csr_matrix: ...
def log_normalise(X: ArrayLike, *, target_sum: float = TARGET_SUM) -> ArrayLike:
    """``log1p(target_sum * x / sum_g x)`` per cell (row): the scale every shift in pertpyro lives on.

    A sparse input stays sparse: only its stored values are transformed (``log1p(0) = 0``), so nothing is densified.
    To average a large matrix without holding its log-normalised copy, use :func:`mean_expression`, which works
    in chunks of rows. A torch tensor (e.g. simulated counts, any leading batch dimensions) stays a tensor on its
    device and dtype.

    Parameters
    ----------
    X
        Counts, cells x genes: a dense or sparse matrix, or a tensor ``(..., genes)``.
    target_sum
        Library size each cell is scaled to.

    Returns
    -------
    For a matrix, a ``float64`` array of the same shape (CSR when ``X`` is sparse); for a tensor, a tensor.
    Cells with zero total counts give a row of zeros.
    """
    if isinstance(X, torch.Tensor):
        return torch.log1p(target_sum * X / X.sum(-1, keepdim=True).clamp_min(1.0))
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
    moments: LabelMoments, control: str, *, reference: Reference = "control", labels: Sequence[str] | None = None
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


def shift_variance_from_moments(moments: LabelMoments, control: str, labels: Sequence[str]) -> pd.DataFrame:
    """Sampling variance of the observed shifts of ``labels`` versus ``control``: ``s2_pg / n_p + s2_cg / n_c``.

    Variances of log-normalised expression with ``ddof=1`` (NaN for a label with one cell); labels x genes.
    """
    labels = list(labels)
    noise_c = moments.var.loc[control] / moments.n.loc[control]
    return moments.var.loc[labels].div(moments.n.loc[labels], axis=0) + noise_c


MIN_LABELS_FOR_PRIOR = 3
"""Labels needed to estimate the prior variance of :func:`normal_shrinkage_weights`; with fewer, no shrinkage."""


def normal_shrinkage_weights(shifts: np.ndarray, variances: np.ndarray) -> np.ndarray:
    """Empirical-Bayes weights ``tau2 / (tau2 + s2)`` of observed shifts under a zero-centred normal prior.

    ``shifts`` and their sampling ``variances`` are ``(labels, ...)``; the prior variance of each column is the method
    of moments estimate over the labels, ``tau2 = max(0, Var_labels(shifts) - mean_labels(variances))`` (``ddof=0``),
    and a shift is kept in the fraction ``tau2 / (tau2 + s2)`` (0 where both are 0). With fewer than
    :data:`MIN_LABELS_FOR_PRIOR` labels the prior is not estimable and every weight is 1.
    """
    if shifts.shape[0] < MIN_LABELS_FOR_PRIOR:
        return np.ones_like(shifts, dtype=np.float64)
    tau2 = np.maximum(shifts.var(axis=0) - variances.mean(axis=0), 0.0)
    total = tau2 + variances
    return np.divide(tau2, total, out=np.zeros_like(total, dtype=np.float64), where=total > 0)


def observed_shift(
    adata: AnnData,
    *,
    reference: Reference = "control",
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


def strong_perturbations(
    adata: AnnData, *, threshold: float = STRONG_SIGNAL_TO_NOISE, chunk_size: int = CHUNK_SIZE
) -> list[str]:
    """Perturbations whose observed shift clearly exceeds its sampling noise.

    The signal-to-noise ratio of label ``p`` is ``sum_g d_pg^2 / sum_g (s2_pg / n_p + s2_cg / n_c)``: the squared
    norm of its observed shift versus control, over the value that squared norm has in expectation when the label
    has no effect (the sampling variances of the two means, ``s2`` with ``ddof=1``). It is about 1 for a null
    perturbation whatever its cell count, unlike the raw norm, which is largest for the labels with fewest cells.

    Parameters
    ----------
    adata
        AnnData set up with :func:`pertpyro.setup_anndata` (the training cells).
    threshold
        Minimum signal-to-noise ratio.
    chunk_size
        Cells log-normalised at once.

    Returns
    -------
    Sorted labels with ratio ``>= threshold`` (labels with one cell, whose variance is unknown, are excluded).
    """
    registry = get_registry(adata)
    moments = label_moments(adata, chunk_size=chunk_size)
    return strong_from_moments(moments, registry.control, threshold=threshold)


def strong_from_moments(moments: LabelMoments, control: str, *, threshold: float = STRONG_SIGNAL_TO_NOISE) -> list[str]:
    """:func:`strong_perturbations` from precomputed :class:`LabelMoments`."""
    if control not in moments.mean.index:
        raise ValueError(f"No control cells (label {control!r}): cannot rank perturbations by effect.")
    shift = shift_from_moments(moments, control)
    noise = shift_variance_from_moments(moments, control, shift.index)
    ratio = (shift**2).sum(axis=1) / noise.sum(axis=1, skipna=False)
    return sorted(ratio.index[ratio.to_numpy() >= threshold].tolist())
