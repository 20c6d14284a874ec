"""Training (Lightning around the ELBO) and held-out likelihood."""

from pertpyro.inference._elbo import CellEnumELBO
from pertpyro.inference._iwelbo import iwelbo_per_cell
from pertpyro.inference._lightning import SVIModule, fit
from pertpyro.inference._memory import keep_freed_memory

__all__ = ["CellEnumELBO", "SVIModule", "fit", "iwelbo_per_cell", "keep_freed_memory"]
