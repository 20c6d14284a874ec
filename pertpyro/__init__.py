"""pertpyro: Bayesian generative models for single-cell CRISPR perturbation screens, in Pyro."""

__version__ = "0.1.0"

from pertpyro import datasets, evaluate, plotting, pp
from pertpyro._settings import local_params, set_seed
from pertpyro.data import Registry, get_registry, setup_anndata
from pertpyro.models import PerturbationModel

__all__ = ["PerturbationModel", "Registry", "get_registry", "local_params", "set_seed", "setup_anndata"]
