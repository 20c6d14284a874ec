"""Posterior export: samples of the global sites and posterior predictive checks as ``arviz.InferenceData``."""

from pertpyro.posterior._arviz import import_arviz, posterior_predictive_summaries, to_inference_data

__all__ = ["import_arviz", "posterior_predictive_summaries", "to_inference_data"]
