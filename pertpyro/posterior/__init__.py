"""Posterior export and calibration: ``arviz.InferenceData``, credible intervals and their recalibration."""

from pertpyro.posterior._arviz import import_arviz, posterior_predictive_summaries, to_inference_data
from pertpyro.posterior._intervals import (
    DEFAULT_LEVELS,
    IntervalCalibration,
    fit_interval_calibration,
    interval_bounds,
    interval_coverage,
    null_calibration,
)
from pertpyro.posterior._protocol import FittedModel
from pertpyro.posterior._replica import ReplicaCalibration, calibrate_by_replica, simulate_replica

__all__ = [
    "DEFAULT_LEVELS",
    "FittedModel",
    "IntervalCalibration",
    "ReplicaCalibration",
    "calibrate_by_replica",
    "fit_interval_calibration",
    "import_arviz",
    "interval_bounds",
    "interval_coverage",
    "null_calibration",
    "posterior_predictive_summaries",
    "simulate_replica",
    "to_inference_data",
]
