"""pertpyro: Bayesian generative models for single-cell CRISPR perturbation screens, in Pyro."""

from pertpyro import datasets, evaluation, plotting, pp
from pertpyro._settings import local_params, set_seed
from pertpyro._version import __version__
from pertpyro.data import Registry, get_registry, setup_anndata
from pertpyro.model import PerturbationModel

__all__ = [
    "PerturbationModel",
    "Registry",
    "__version__",
    "datasets",
    "evaluation",
    "get_registry",
    "local_params",
    "plotting",
    "pp",
    "set_seed",
    "setup_anndata",
]
