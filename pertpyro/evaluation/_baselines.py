"""Baselines every model is reported beside, computed from training cells only.

Each baseline is a function ``(adata_train, labels) -> DataFrame`` (labels x genes) of predicted mean shift of
``log1p(1e4 * x / sum x)`` versus control cells, the quantity :meth:`predict_shift` of a model returns. They are
collected in :data:`BASELINES`.

A baseline that cannot predict a label (a label without training cells, or a combination one of whose singles has
no training cells) returns a row of NaN for it, lists it in ``result.attrs["unpredictable"]`` and logs a warning;
it never drops the label.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from pertpyro.data._registry import Registry, get_registry
from pertpyro.data._statistics import (
    CHUNK_SIZE,
    MIN_LABELS_FOR_PRIOR,
    LabelMoments,
    label_moments,
    normal_shrinkage_weights,
)

logger = logging.getLogger(__name__)

Baseline = Callable[[AnnData, Sequence[str]], pd.DataFrame]


def _training_moments(adata_train: AnnData) -> tuple[Registry, LabelMoments]:
    registry = get_registry(adata_train)
    moments = label_moments(adata_train, chunk_size=CHUNK_SIZE)
    if registry.control not in moments.mean.index:
        raise ValueError(f"The training cells contain no control cells (label {registry.control!r}).")
    return registry, moments


def _finish(shifts: dict[str, np.ndarray], labels: Sequence[str], genes: pd.Index, name: str) -> pd.DataFrame:
    """Stack predicted rows (NaN for labels absent from ``shifts``), record and log the unpredictable labels."""
    labels = [str(lab) for lab in labels]
    nan_row = np.full(len(genes), np.nan)
    values = np.stack([shifts.get(lab, nan_row) for lab in labels]) if labels else np.zeros((0, len(genes)))
    out = pd.DataFrame(values, index=pd.Index(labels, name="perturbation"), columns=genes)
    unpredictable = [lab for lab in labels if lab not in shifts]
    out.attrs["unpredictable"] = unpredictable
    if unpredictable:
        logger.warning("Baseline %r cannot predict %d labels (NaN): %s", name, len(unpredictable), unpredictable)
    return out


def _training_shifts(moments: LabelMoments, control: str) -> pd.DataFrame:
    """Training shift (label mean minus control mean) of every non-control training label."""
    perturbed = [lab for lab in moments.mean.index if lab != control]
    return moments.mean.loc[perturbed] - moments.mean.loc[control]


def no_change(adata_train: AnnData, labels: Sequence[str]) -> pd.DataFrame:
    """Predict no shift at all: a perturbed cell looks like a control cell.

    Parameters
    ----------
    adata_train
        Training cells, set up with :func:`pertpyro.setup_anndata` (only its genes are used).
    labels
        Labels to predict.

    Returns
    -------
    Zeros, labels x genes.
    """
    genes = pd.Index(adata_train.var_names.astype(str), name="gene")
    return _finish({str(lab): np.zeros(len(genes)) for lab in labels}, labels, genes, "no_change")


def training_mean(adata_train: AnnData, labels: Sequence[str]) -> pd.DataFrame:
    """Predict the training shift of each label.

    The training shift is the mean log-normalised expression of the label's training cells minus that of the
    training controls.

    Parameters
    ----------
    adata_train
        Training cells, set up with :func:`pertpyro.setup_anndata`.
    labels
        Labels to predict; the control label predicts zero, a label without training cells NaN.

    Returns
    -------
    Predicted shifts, labels x genes.
    """
    registry, moments = _training_moments(adata_train)
    shifts = _training_shifts(moments, registry.control)
    rows = {lab: shifts.loc[lab].to_numpy() for lab in shifts.index}
    rows[registry.control] = np.zeros(shifts.shape[1])
    return _finish(rows, labels, moments.mean.columns, "training_mean")


def shrunk_training_mean(
    adata_train: AnnData, labels: Sequence[str], *, prior_mean: Literal["control", "mean"] = "control"
) -> pd.DataFrame:
    """Empirical-Bayes shrinkage of the training shifts, gene by gene.

    For training label ``t`` and gene ``g``, the training shift ``d_tg`` is modelled as
    ``d_tg ~ N(delta_tg, s2_tg)`` with the sampling variance of a difference of two means,
    ``s2_tg = v_tg / n_t + v_cg / n_c`` (``v`` the within-label variance, ``ddof=1``; a label with a single training
    cell borrows the control variance), and a per-gene normal prior ``delta_tg ~ N(mu_g, tau2_g)``. The prior
    scale is the method-of-moments estimate over the ``T`` non-control training labels,
    ``tau2_g = max(0, Var_t(d_tg) - mean_t(s2_tg))`` (``Var`` with ``ddof=0``). The prediction is the posterior mean

    ``mu_g + tau2_g / (tau2_g + s2_tg) * (d_tg - mu_g)``,

    so noisy shifts (few cells, noisy gene) and genes on which perturbations hardly differ are shrunk most. With
    ``prior_mean="control"`` (default), ``mu_g = 0``: the prior is centred on no change; ``prior_mean="mean"``
    centres it on the per-gene mean shift over perturbations, ``mu_g = mean_t d_tg`` (which pulls weak knockouts
    toward the strong ones' shared shift). A combination is predicted from its own training
    cells, like the other labels. With fewer than three training labels the prior is not estimable and the training
    means are returned unchanged (logged).

    Parameters
    ----------
    adata_train
        Training cells, set up with :func:`pertpyro.setup_anndata`.
    labels
        Labels to predict; the control label predicts zero, a label without training cells NaN.
    prior_mean
        ``"control"`` (``mu_g = 0``) or ``"mean"`` (``mu_g`` = mean training shift over labels).

    Returns
    -------
    Predicted shifts, labels x genes.
    """
    if prior_mean not in ("control", "mean"):
        raise ValueError(f"prior_mean must be 'control' or 'mean', got {prior_mean!r}.")
    registry, moments = _training_moments(adata_train)
    control = registry.control
    shifts = _training_shifts(moments, control)
    d = shifts.to_numpy()
    if len(shifts) < MIN_LABELS_FOR_PRIOR:
        logger.warning("shrunk_training_mean: %d training labels cannot estimate the prior; no shrinkage.", len(d))
        posterior = d
    else:
        control_var = moments.var.loc[control].to_numpy()
        if not np.isfinite(control_var).all():
            raise ValueError("shrunk_training_mean needs at least two training control cells.")
        within = moments.var.loc[shifts.index].to_numpy()
        within = np.where(np.isfinite(within), within, control_var)  # single-cell labels borrow the control variance
        s2 = within / moments.n.loc[shifts.index].to_numpy()[:, None] + control_var / moments.n.loc[control]
        mu = np.zeros(d.shape[1]) if prior_mean == "control" else d.mean(axis=0)
        posterior = mu + normal_shrinkage_weights(d - mu, s2) * (d - mu)
    rows = {lab: posterior[i] for i, lab in enumerate(shifts.index)}
    rows[control] = np.zeros(d.shape[1])
    return _finish(rows, labels, moments.mean.columns, "shrunk_training_mean")


def additive(adata_train: AnnData, labels: Sequence[str]) -> pd.DataFrame:
    """Additive model: a combination ``"A+B"`` is predicted by the sum of the training shifts of ``A`` and ``B``.

    A single label is predicted by its training shift (as :func:`training_mean`). The combination's own training
    cells, if any, are not used. A combination one of whose singles has no training cells is unpredictable (NaN).

    Parameters
    ----------
    adata_train
        Training cells, set up with :func:`pertpyro.setup_anndata`.
    labels
        Labels to predict.

    Returns
    -------
    Predicted shifts, labels x genes.
    """
    registry, moments = _training_moments(adata_train)
    shifts = _training_shifts(moments, registry.control)
    singles = {lab: shifts.loc[lab].to_numpy() for lab in shifts.index if len(registry.split_label(lab)) == 1}
    rows = {}
    for label in labels:
        label = str(label)
        targets = registry.split_label(label)
        if all(t in singles for t in targets):
            rows[label] = np.sum([singles[t] for t in targets], axis=0) if targets else np.zeros(shifts.shape[1])
    return _finish(rows, labels, moments.mean.columns, "additive")


BASELINES: dict[str, Baseline] = {
    "no_change": no_change,
    "training_mean": training_mean,
    "shrunk_training_mean": shrunk_training_mean,
    "additive": additive,
}
"""Baselines by name, each ``(adata_train, labels) -> DataFrame`` of predicted shifts (labels x genes)."""
