"""AnnData contract, registry, datasets, simulator and minibatch loading."""

from pertpyro.data._datasets import collectri, papalexi2021
from pertpyro.data._registry import Registry, batch_codes, design_matrix, get_counts, get_registry
from pertpyro.data._setup import setup_anndata, validate_counts

# Registry, get_registry and setup_anndata are documented as top-level names (pertpyro.Registry, ...).
__all__ = ["batch_codes", "design_matrix", "get_counts", "validate_counts"]
