"""Posterior draws of average treatment effects, exceedance probabilities and Bayesian FDR hit calls.

The input is :func:`pertpyro.causal._ate.label_shift_draws` (the draws behind ``average_treatment_effect``: same
engine, same seeds): posterior draws of the shift of mean ``log1p(1e4 x / sum x)`` per label and gene. From them, :func:`exceedance_table` gives the posterior probability that ``|shift| > threshold`` and, optionally, calls
hits by controlling the Bayesian false discovery rate (Newton et al. 2004; Müller et al. 2006). Two rules:

- ``"local"`` (default): call an effect when its own posterior probability of being null, the local false
  discovery rate ``1 - p``, is at most ``fdr``. The expected FDR of the called set, ``mean(1 - p)``, is then below
  ``fdr`` too, with a margin.
- ``"set"``: call the largest top-``k`` set whose expected FDR ``mean(1 - p)`` is at most ``fdr``. It fills the
  margin with effects whose probability is far below ``1 - fdr`` (about 0.5 at the end of a large set). Those are
  the borderline effects, where a variational posterior is least reliable (shrinkage and an efficacy fitted per
  target move them by more than the posterior spread); on simulated screens the realised FDR of this rule reaches
  about twice ``fdr`` (``benchmarks/calibration.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

import numpy as np
import pandas as pd
from scipy.stats import norm

FdrRule = Literal["local", "set"]
FDR_RULES = ("local", "set")


def check_query(threshold: float, fdr: float | None) -> None:
    """Raise a ``ValueError`` for a negative or non-finite ``threshold`` or an ``fdr`` outside ``(0, 1)``."""
    if threshold < 0 or not np.isfinite(threshold):
        raise ValueError(f"threshold must be a finite non-negative number, got {threshold}.")
    if fdr is not None and not 0 < fdr < 1:
        raise ValueError(f"fdr must lie strictly between 0 and 1, got {fdr}.")


class Recalibration(Protocol):
    """A variance model that widens posterior intervals (:class:`pertpyro.posterior.IntervalCalibration`)."""

    def sd(self, draws: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and recalibrated standard deviation of draws ``(samples, ...)``."""
        ...

    def bounds(self, draws: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
        """Recalibrated interval of mass ``level``."""
        ...


def bayesian_fdr_calls(
    probability: np.ndarray, fdr: float, *, rule: FdrRule = "local"
) -> tuple[np.ndarray, np.ndarray]:
    """Call effects at a Bayesian false discovery rate ``fdr`` (module docstring).

    Effects are sorted by decreasing probability ``p``. ``rule="local"`` calls those with ``1 - p <= fdr``;
    ``rule="set"`` calls the first ``k``, with ``k`` the largest number such that the mean of ``1 - p`` over them
    is ``<= fdr`` (the mean is non-decreasing in ``k``, so this is a prefix). Both calls are prefixes of the order,
    the local one the shorter.

    Parameters
    ----------
    probability
        Posterior probability that each effect is real, any shape.
    fdr
        Target Bayesian false discovery rate, in ``(0, 1)``.
    rule
        ``"local"`` or ``"set"``.

    Returns
    -------
    Boolean calls and the expected FDR of the set called at each effect's rank (``q``-value analogue), both of the
    shape of ``probability``.
    """
    if not 0 < fdr < 1:
        raise ValueError(f"fdr must lie strictly between 0 and 1, got {fdr}.")
    if rule not in FDR_RULES:
        raise ValueError(f"rule must be one of {FDR_RULES}, got {rule!r}.")
    p = np.asarray(probability, dtype=np.float64)
    flat = p.ravel()
    order = np.argsort(-flat, kind="stable")
    running = np.cumsum(1.0 - flat[order]) / np.arange(1, flat.size + 1)  # expected FDR of the top-k set
    n_called = int(np.searchsorted(running, fdr, side="right"))  # running is non-decreasing
    if rule == "local":
        n_called = int(np.sum(1.0 - flat <= fdr))
    called = np.zeros(flat.size, dtype=bool)
    called[order[:n_called]] = True
    qvalue = np.empty(flat.size)
    qvalue[order] = running
    return called.reshape(p.shape), qvalue.reshape(p.shape)


def exceedance_table(
    draws: np.ndarray,
    labels: Sequence[str],
    genes: Sequence[str],
    *,
    threshold: float,
    fdr: float | None = None,
    calibration: Recalibration | None = None,
    rule: FdrRule = "local",
) -> pd.DataFrame:
    """Tidy table of the posterior probability that ``|shift| > threshold``, with optional FDR hit calls.

    Parameters
    ----------
    draws
        Posterior draws of the shifts, ``(n_samples, labels, genes)``.
    labels, genes
        Names of the label and gene axes.
    threshold
        Smallest absolute shift (log1p scale) that counts as an effect; ``>= 0``.
    fdr
        If given, add ``hit`` (called at Bayesian FDR ``fdr`` over every label and gene of the table) and
        ``lfdr_set`` (the expected FDR of the set called down to this effect).
    calibration
        An :class:`~pertpyro.posterior.IntervalCalibration`: the probability is then that of its recalibrated
        Normal, ``P(|N(mean, sd)| > threshold)``, instead of the fraction of draws.
    rule
        FDR rule of the calls, ``"local"`` or ``"set"`` (:func:`bayesian_fdr_calls`).

    Returns
    -------
    DataFrame with columns ``perturbation``, ``gene``, ``mean``, ``probability`` (and ``hit``, ``lfdr_set``).
    """
    check_query(threshold, fdr)
    draws = np.asarray(draws)
    if draws.ndim != 3 or draws.shape[1:] != (len(labels), len(genes)):
        raise ValueError(f"draws must have shape (samples, {len(labels)}, {len(genes)}), got {draws.shape}.")
    if calibration is None:
        probability = (np.abs(draws) > threshold).mean(0)  # (L, G)
    else:
        mean, sd = calibration.sd(draws.astype(np.float64))
        sd = np.maximum(sd, 1e-12)
        probability = norm.cdf((-threshold - mean) / sd) + norm.sf((threshold - mean) / sd)
    n_labels, n_genes = probability.shape
    out = pd.DataFrame(
        {
            "perturbation": np.repeat(np.asarray(labels, dtype=object), n_genes),
            "gene": np.tile(np.asarray(genes, dtype=object), n_labels),
            "mean": draws.mean(0).ravel(),
            "probability": probability.ravel(),
        }
    )
    if fdr is not None:
        called, qvalue = bayesian_fdr_calls(probability, fdr, rule=rule)
        out["hit"] = called.ravel()
        out["lfdr_set"] = qvalue.ravel()
    return out
