"""Calibration of credible intervals: how often do the model's intervals contain the true effects?

On the simulator (:func:`pertpyro.datasets.simulate`) the true intent-to-treat shifts are known
(:func:`pertpyro.datasets.truth_shift_frame`: the population difference of mean ``log1p(1e4 x / sum x)`` between
all cells that received a guide and control cells), so the coverage of the equal-tailed credible intervals of
``model.ate`` can be measured at several levels. A calibrated model covers about ``level`` of the true shifts.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData

from pertpyro._keys import TRUTH_KEY
from pertpyro.data._registry import get_registry
from pertpyro.data._simulate import truth_shift_frame
from pertpyro.data._statistics import label_moments
from pertpyro.posterior._intervals import (
    DEFAULT_LEVELS,
    IntervalCalibration,
    interval_coverage,
)
from pertpyro.posterior._protocol import FittedModel


def calibration_table(
    model: FittedModel,
    truth: pd.DataFrame,
    *,
    levels: Sequence[float] = DEFAULT_LEVELS,
    n_samples: int = 100,
    max_cells: int | None = 2000,
    calibration: IntervalCalibration | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Coverage of ``model.ate`` intervals for known true shifts (a ``labels x genes`` frame).

    Parameters
    ----------
    model
        A trained :class:`~pertpyro.PerturbationModel`.
    truth
        True shifts, index = perturbation labels, columns = the model's genes (e.g. from
        :func:`pertpyro.datasets.truth_shift_frame`).
    levels, calibration
        As in :func:`interval_coverage`.
    n_samples, max_cells, seed
        Passed to ``model.ate_draws``.

    Returns
    -------
    The coverage table of :func:`interval_coverage`, plus ``nominal - coverage`` as ``gap``.
    """
    labels = [str(label) for label in truth.index]
    genes = list(model.registry.genes)
    draws = model.ate_draws(labels, n_samples=n_samples, max_cells=max_cells, seed=seed)
    table = interval_coverage(draws, truth.loc[labels, genes].to_numpy(), levels=levels, calibration=calibration)
    table["gap"] = table["level"] - table["coverage"]
    return table


def heldout_reference(adata: AnnData, labels: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Observed shift of held-out cells against their controls, with its standard error, ``labels x genes``.

    The reference :func:`fit_interval_calibration` needs on real data, where no truth exists: the difference of the
    mean ``log1p(1e4 x / sum x)`` between a label's held-out cells and the held-out control cells, and
    ``sqrt(var_label / n_label + var_control / n_control)``. Labels without held-out cells are NaN.
    """
    registry = get_registry(adata)
    moments = label_moments(adata)
    labels = [str(label) for label in labels]
    if registry.control not in moments.mean.index:
        raise ValueError(f"The held-out cells have no control cells labelled {registry.control!r}.")
    ctrl_mean, ctrl_var = moments.mean.loc[registry.control], moments.var.loc[registry.control]
    n_ctrl = moments.n.loc[registry.control]
    mean = moments.mean.reindex(labels)
    var, n = moments.var.reindex(labels), moments.n.reindex(labels)
    shift = mean - ctrl_mean
    se = np.sqrt(var.div(n, axis=0) + ctrl_var / n_ctrl)
    return shift, se


def report_labels(model: FittedModel, adata: AnnData) -> list[str]:
    """Labels :func:`calibration_report` scores: the simulator truth's, else every seen target of the model."""
    if TRUTH_KEY in adata.uns:
        return [str(label) for label in truth_shift_frame(adata).index]
    return [str(label) for label in model.registry.targets]


def calibration_report(
    model: FittedModel,
    adata: AnnData,
    heldout: AnnData | None = None,
    *,
    levels: Sequence[float] = DEFAULT_LEVELS,
    n_samples: int = 100,
    seed: int = 0,
    draws: np.ndarray | None = None,
) -> pd.DataFrame:
    """Coverage of the ATE intervals of every seen label, against the truth and/or held-out cells.

    Parameters
    ----------
    model
        A trained :class:`~pertpyro.PerturbationModel`.
    adata
        The full data set; when made by :func:`pertpyro.datasets.simulate` (``uns["truth"]`` with finite shifts),
        the intervals are scored against the true shifts (``reference = "truth"``).
    heldout
        Held-out cells (e.g. the test split): the intervals, widened by each observed shift's standard error, are
        scored against the observed shifts (``reference = "heldout"``), the check available on real data.
    levels, n_samples, seed
        Interval masses, posterior draws and seed.
    draws
        ``model.ate_draws(report_labels(model, adata), ...)`` computed beforehand (e.g. by
        :func:`~pertpyro.evaluation._draws.heldout_draws`); ``n_samples`` and ``seed`` are then unused.

    Returns
    -------
    DataFrame with ``reference``, ``intervals`` (``raw``; ``calibrated`` too once ``model.calibrate()`` has run),
    ``level``, ``coverage``, ``mean_width``, ``n`` (empty when neither applies).
    """
    genes = list(model.registry.genes)
    tables = []
    truth = truth_shift_frame(adata) if TRUTH_KEY in adata.uns else None
    has_truth = truth is not None and bool(np.isfinite(truth.to_numpy()).any())  # simulate(n_truth_cells=0): NaN
    labels = report_labels(model, adata)
    if draws is None:
        draws = model.ate_draws(labels, n_samples=n_samples, seed=seed)
    elif np.shape(draws)[1:] != (len(labels), len(genes)):
        raise ValueError(f"draws must be (samples, {len(labels)}, {len(genes)}), got {np.shape(draws)}.")
    calibrations: dict[str, IntervalCalibration | None] = {"raw": None}
    if model.interval_calibration_ is not None:
        calibrations["calibrated"] = model.interval_calibration_
    if heldout is not None:
        observed, se = heldout_reference(heldout, labels)
    for name, calibration in calibrations.items():
        if has_truth and truth is not None:
            truth_values = truth.loc[labels, genes].to_numpy()
            table = interval_coverage(draws, truth_values, levels=levels, calibration=calibration)
            tables.append(table.assign(reference="truth", intervals=name))
        if heldout is not None:
            table = interval_coverage(
                draws,
                observed[genes].to_numpy(),
                levels=levels,
                reference_se=se[genes].to_numpy(),
                calibration=calibration,
            )
            tables.append(table.assign(reference="heldout", intervals=name))
    columns = ["reference", "intervals", "level", "coverage", "mean_width", "n"]
    if not tables:
        return pd.DataFrame(columns=columns)
    return pd.concat(tables, ignore_index=True)[columns]
