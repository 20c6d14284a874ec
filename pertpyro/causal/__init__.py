"""Causal queries: interventions through ``pyro.poutine.do``."""

from pertpyro.causal._ate import average_treatment_effect, log_normalise
