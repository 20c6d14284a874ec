"""Effect strength: the share of a held-out shift that a prediction carries, corrected for the held-out noise.

The least-squares slope of predicted on observed shifts over genes answers "is the predicted effect as large as the
observed one?", but the observed shifts of held-out cells carry sampling noise, and noise in the regressor dilutes
the slope (regression dilution): even the true shift scores ``reliability = var(true) / var(observed) < 1``. The
corrected slope divides the covariance by the variance of the observed shifts less their expected sampling variance
(a method-of-moments errors-in-variables fit), so that a prediction equal to the true shift scores 1, one at half
its size 0.5, whatever the number of held-out cells. Noise in the prediction itself does not bias it (it is
independent of the held-out cells' noise), so the training mean of an independent set of cells also scores about 1:
a model below 1 shrinks the effect, above 1 inflates it.

The sampling variance of the observed shift of label ``p`` on gene ``g`` is ``s2_pg / n_p + s2_cg / n_c``
(variances of log-normalised expression with ``ddof=1``, ``c`` the control cells;
:func:`pertpyro.data._statistics.shift_variance_from_moments`, which :func:`pertpyro.data.strong_perturbations` uses too).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData

from pertpyro.data._registry import get_registry
from pertpyro.data._statistics import label_moments, shift_from_moments, shift_variance_from_moments

MIN_RELIABILITY = 0.2
"""Labels whose observed shifts are less reliable than this get no corrected slope (the correction would divide by
a variance that is mostly noise)."""

STRENGTH_COLUMNS = ("slope", "reliability", "corrected_slope")


def corrected_slope(
    predicted: np.ndarray, observed: np.ndarray, noise_var: np.ndarray, *, min_reliability: float = MIN_RELIABILITY
) -> tuple[float, float, float]:
    """Slope of ``predicted`` on ``observed`` over genes, raw and corrected for the noise of ``observed``.

    Parameters
    ----------
    predicted, observed
        Shifts of one label, one value per gene.
    noise_var
        Sampling variance of each observed value.
    min_reliability
        Below this reliability the corrected slope is NaN.

    Returns
    -------
    ``(slope, reliability, corrected_slope)``: the least-squares slope, ``1 - mean(noise_var) / var(observed)``
    and ``slope / reliability``.
    """
    predicted, observed, noise_var = (np.asarray(a, dtype=np.float64) for a in (predicted, observed, noise_var))
    if not predicted.shape == observed.shape == noise_var.shape or predicted.ndim != 1:
        raise ValueError(
            f"predicted, observed and noise_var must be 1-d and of one length, got shapes {predicted.shape}, "
            f"{observed.shape}, {noise_var.shape}."
        )
    if predicted.size < 3:
        raise ValueError(f"A slope over genes needs at least 3 genes, got {predicted.size}.")
    variance = observed.var(ddof=1)
    if not variance > 0:
        return np.nan, np.nan, np.nan
    slope = float(np.cov(predicted, observed)[0, 1] / variance)
    reliability = float(1.0 - noise_var.mean() / variance)
    corrected = slope / reliability if reliability >= min_reliability else np.nan
    return slope, reliability, corrected


def effect_strength(
    predicted: pd.DataFrame,
    adata: AnnData,
    *,
    labels: Sequence[str] | None = None,
    min_reliability: float = MIN_RELIABILITY,
) -> pd.DataFrame:
    """Per label, the slope of predicted on observed held-out shifts, raw and corrected for the held-out noise.

    Parameters
    ----------
    predicted
        Predicted shifts versus control, labels x genes (e.g. ``model.predict_shift(labels)``).
    adata
        Held-out cells, set up with :func:`pertpyro.setup_anndata`, with control cells.
    labels
        Labels to score (default: every label of ``predicted`` with held-out cells).
    min_reliability
        Labels whose observed shifts are less reliable than this get a NaN corrected slope.

    Returns
    -------
    DataFrame indexed by label with columns ``slope`` (least squares of predicted on observed over genes),
    ``reliability`` (share of the observed shifts' variance over genes that is not sampling noise) and
    ``corrected_slope`` (``slope / reliability``: 1 for a prediction at the effect's full size).
    """
    control = get_registry(adata).control
    moments = label_moments(adata)
    if labels is None:
        labels = [lab for lab in predicted.index if lab in moments.n.index and lab != control]
    missing = [lab for lab in labels if lab not in predicted.index]
    if missing:
        raise ValueError(f"No predicted shifts for labels {missing}.")
    observed = shift_from_moments(moments, control, labels=labels)
    genes = observed.columns
    absent = genes.difference(predicted.columns)
    if len(absent):
        raise ValueError(f"predicted lacks {len(absent)} genes of the held-out cells, e.g. {list(absent[:3])}.")
    noise = shift_variance_from_moments(moments, control, labels)[genes]
    rows = [
        corrected_slope(
            predicted.loc[lab, genes].to_numpy(),
            observed.loc[lab].to_numpy(),
            noise.loc[lab].to_numpy(),
            min_reliability=min_reliability,
        )
        for lab in labels
    ]
    return pd.DataFrame(rows, index=pd.Index(list(labels), name="perturbation"), columns=list(STRENGTH_COLUMNS))
