"""Causal queries: interventions through ``pyro.poutine.do``."""

from pertpyro.causal._ate import average_treatment_effect, label_shift_draws
from pertpyro.causal._probability import bayesian_fdr_calls, exceedance_table

__all__ = ["average_treatment_effect", "bayesian_fdr_calls", "exceedance_table", "label_shift_draws"]
