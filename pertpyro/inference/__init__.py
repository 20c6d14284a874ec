"""Training (Lightning around the ELBO) and held-out likelihood."""

from pertpyro.inference._elbo import CellEnumELBO
from pertpyro.inference._guards import NaNGuard, TrainingDivergedError
from pertpyro.inference._iwelbo import iwelbo_per_cell
from pertpyro.inference._lightning import SVIModule, fit
from pertpyro.inference._memory import keep_freed_memory, kept_freed_memory
from pertpyro.inference._resume import TrainingInterrupted

__all__ = [
    "CellEnumELBO",
    "NaNGuard",
    "SVIModule",
    "TrainingDivergedError",
    "TrainingInterrupted",
    "fit",
    "iwelbo_per_cell",
    "keep_freed_memory",
    "kept_freed_memory",
]
