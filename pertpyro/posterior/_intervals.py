"""Credible intervals from posterior draws, their coverage, and their recalibration by a variance model.

A calibrated model's equal-tailed intervals of mass ``level`` contain about ``level`` of the true effects.
:class:`IntervalCalibration` widens the intervals by a variance model fitted where the truth is known (a replica
screen simulated from the model, :func:`pertpyro.posterior.calibrate_by_replica`, or held-out cells).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import norm

DEFAULT_LEVELS = (0.5, 0.8, 0.9, 0.95)


def check_levels(levels: Sequence[float]) -> np.ndarray:
    """``levels`` as a 1-d float array; a ``ValueError`` unless each is strictly between 0 and 1."""
    values = np.asarray(levels, dtype=np.float64)
    if values.ndim != 1 or values.size == 0 or np.any((values <= 0) | (values >= 1)):
        raise ValueError(f"levels must be probabilities strictly between 0 and 1, got {values.tolist()}.")
    return values


def interval_bounds(draws: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Equal-tailed interval of mass ``level`` from draws ``(samples, ...)`` (what ``model.ate`` reports)."""
    lo, hi = np.quantile(draws, [(1 - level) / 2, 1 - (1 - level) / 2], axis=0)
    return lo, hi


def interval_coverage(
    draws: np.ndarray,
    truth: np.ndarray,
    *,
    levels: Sequence[float] = DEFAULT_LEVELS,
    calibration: IntervalCalibration | None = None,
    reference_se: np.ndarray | float | None = None,
    mask: np.ndarray | None = None,
) -> pd.DataFrame:
    """Fraction of true values inside the equal-tailed credible intervals of each level.

    Parameters
    ----------
    draws
        Posterior draws ``(samples, labels, genes)`` (e.g. from ``model.ate_draws``).
    truth
        True values ``(labels, genes)``.
    levels
        Nominal masses of the intervals.
    calibration
        Score the recalibrated intervals of this :class:`IntervalCalibration` instead of the raw posterior
        quantiles.
    reference_se
        Standard error of a noisy reference (e.g. the observed shift of held-out cells) in place of the truth: the
        intervals are then Normal, ``mean +- z sqrt(sd^2 + se^2)`` (with ``sd`` recalibrated by ``calibration``
        when given), i.e. predictive intervals for the reference. Width is still that of the model's intervals.
    mask
        Optional boolean ``(labels, genes)``: score only these entries.

    Returns
    -------
    DataFrame with one row per level: ``level``, ``coverage``, ``mean_width``, ``n``.
    """
    level_values = check_levels(levels)
    draws, truth = np.asarray(draws, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    if draws.ndim != 3 or draws.shape[1:] != truth.shape:
        raise ValueError(f"draws (samples, L, G) and truth (L, G) disagree: {draws.shape} vs {truth.shape}.")
    keep = np.isfinite(truth) if mask is None else (np.asarray(mask, bool) & np.isfinite(truth))
    if reference_se is not None:
        keep &= np.isfinite(np.broadcast_to(np.asarray(reference_se, dtype=np.float64), truth.shape))
    if not keep.any():
        raise ValueError("No finite true values to score.")
    rows = []
    for level in level_values:
        if reference_se is not None:
            mean, sd = (calibration or IntervalCalibration()).sd(draws)
            half = norm.ppf(1 - (1 - level) / 2) * sd
            predictive = norm.ppf(1 - (1 - level) / 2) * np.sqrt(sd**2 + np.asarray(reference_se) ** 2)
            inside = np.abs(truth - mean) <= predictive
            lo, hi = mean - half, mean + half
        elif calibration is None:
            lo, hi = interval_bounds(draws, float(level))
            inside = (truth >= lo) & (truth <= hi)
        else:
            lo, hi = calibration.bounds(draws, float(level))
            inside = (truth >= lo) & (truth <= hi)
        rows.append(
            {
                "level": float(level),
                "coverage": float(inside[keep].mean()),
                "mean_width": float((hi - lo)[keep].mean()),
                "n": int(keep.sum()),
            }
        )
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class IntervalCalibration:
    """Post-hoc recalibration of credible intervals: a variance model fitted on held-out data.

    The recalibrated interval of mass ``level`` is ``mean +- z_level * sqrt((scale * sd)^2 + (relative * mean)^2)``
    with ``mean`` and ``sd`` the posterior mean and standard deviation of the draws. ``scale`` stretches the
    posterior spread; ``relative`` adds an error proportional to the effect, the form of the errors a point-estimated
    knockout efficacy (the intent-to-treat shift is the response rate times the responders' shift) and a shrinkage
    prior leave. ``IntervalCalibration(1, 0)`` is the Normal approximation of the posterior itself.
    """

    scale: float = 1.0
    relative: float = 0.0

    def sd(self, draws: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and recalibrated standard deviation of draws ``(samples, ...)``."""
        mean, sd = draws.mean(0), draws.std(0)
        return mean, np.sqrt((self.scale * sd) ** 2 + (self.relative * mean) ** 2)

    def bounds(self, draws: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
        """Recalibrated interval of mass ``level``."""
        mean, sd = self.sd(np.asarray(draws, dtype=np.float64))
        half = norm.ppf(1 - (1 - level) / 2) * sd
        return mean - half, mean + half


def fit_interval_calibration(
    draws: np.ndarray,
    reference: np.ndarray,
    *,
    reference_se: np.ndarray | float = 0.0,
    levels: Sequence[float] = DEFAULT_LEVELS,
    scales: np.ndarray | None = None,
    relatives: np.ndarray | None = None,
) -> IntervalCalibration:
    """Fit an :class:`IntervalCalibration` so that its intervals cover a held-out reference at the nominal rates.

    Grid search of ``(scale, relative)`` minimising the squared gaps between nominal level and coverage, summed over
    ``levels``. The reference may be exact (the simulator's truth: ``reference_se = 0``) or noisy (the observed
    shift of held-out cells, with its standard error): the reference's own noise is added to the interval's
    variance when scoring, so it is not blamed on the model. Fit on one split (held-out cells, or another
    simulation) and score on another; coverage on the data the calibration was fitted on is not evidence.

    Parameters
    ----------
    draws
        Posterior draws ``(samples, labels, genes)`` on the calibration split.
    reference
        Reference values ``(labels, genes)`` (NaN entries are skipped).
    reference_se
        Standard error of each reference value (0 for exact truth).
    levels
        Interval masses to match.
    scales, relatives
        Grids (defaults: 0.25 to 4 by 0.05; 0 to 1 by 0.02).

    Returns
    -------
    The fitted calibration.
    """
    level_values = check_levels(levels)
    draws, reference = np.asarray(draws, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if draws.ndim != 3 or draws.shape[1:] != reference.shape:
        raise ValueError(f"draws (samples, L, G) and reference (L, G) disagree: {draws.shape} vs {reference.shape}.")
    scales = np.arange(0.25, 4.0001, 0.05) if scales is None else np.asarray(scales, dtype=np.float64)
    relatives = np.arange(0.0, 1.0001, 0.02) if relatives is None else np.asarray(relatives, dtype=np.float64)
    keep = np.isfinite(reference)
    se = np.broadcast_to(np.asarray(reference_se, dtype=np.float64), reference.shape)[keep]
    mean, sd = draws.mean(0)[keep], draws.std(0)[keep]
    error = np.abs(reference[keep] - mean)
    z = norm.ppf(1 - (1 - level_values) / 2)  # (V,)
    s, c = np.meshgrid(scales, relatives, indexing="ij")  # (S, C)
    total_sd = np.sqrt((s[..., None] * sd) ** 2 + (c[..., None] * mean) ** 2 + se**2)  # (S, C, N)
    standardised = error / np.maximum(total_sd, 1e-12)
    coverage = (standardised[..., None] <= z).mean(-2)  # (S, C, V)
    loss = ((coverage - level_values) ** 2).sum(-1) + 1e-6 * (s + c)  # ties: the narrower intervals
    i, j = np.unravel_index(np.argmin(loss), loss.shape)
    return IntervalCalibration(scale=float(scales[i]), relative=float(relatives[j]))


def null_calibration(
    null_draws: np.ndarray,
    base: IntervalCalibration | None = None,
    *,
    levels: Sequence[float] = DEFAULT_LEVELS,
) -> IntervalCalibration:
    """Widen a calibration until the intervals of null pseudo-targets cover zero at the nominal rates.

    The effects of null pseudo-targets (control cells given a fake target label,
    :func:`pertpyro.data.add_negative_controls`) are zero on every gene, on the real screen itself: the one truth a
    real screen offers. Their draws measure the noise floor of the screen's estimates, including misfit that a
    replica simulated from the model cannot show (``calibrate_by_replica``). The ``scale`` that makes their
    intervals (with ``base.relative`` kept) cover zero at ``levels`` is fitted by :func:`fit_interval_calibration`;
    the result keeps the larger of it and ``base.scale``, so the nulls can only widen the intervals (a few null
    groups say little about large effects, which the relative term covers).

    Parameters
    ----------
    null_draws
        Posterior draws of the null pseudo-targets' shifts, ``(samples, nulls, genes)``.
    base
        Calibration to widen (e.g. ``model.interval_calibration_``); ``None``: the raw posterior.
    levels
        Interval masses to match.

    Returns
    -------
    The widened :class:`IntervalCalibration`.
    """
    draws = np.asarray(null_draws, dtype=np.float64)
    if draws.ndim != 3 or draws.shape[1] == 0:
        raise ValueError(f"null_draws must be (samples, nulls, genes) with at least one null, got {draws.shape}.")
    base = base or IntervalCalibration()
    fitted = fit_interval_calibration(
        draws, np.zeros(draws.shape[1:]), levels=levels, relatives=np.array([base.relative])
    )
    return IntervalCalibration(scale=max(base.scale, fitted.scale), relative=base.relative)


__all__ = [
    "DEFAULT_LEVELS",
    "IntervalCalibration",
    "fit_interval_calibration",
    "interval_bounds",
    "interval_coverage",
    "null_calibration",
]
