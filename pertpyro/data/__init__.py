"""AnnData contract, registry, datasets, simulator and minibatch loading."""

from pertpyro.data._registry import Registry, batch_codes, design_matrix, get_counts, get_registry
