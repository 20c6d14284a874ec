"""pertpyro: Bayesian generative models for single-cell CRISPR perturbation screens, in Pyro."""

from pertpyro import datasets, evaluation, plotting, pp
from pertpyro._io import ModelFileError
from pertpyro._settings import local_params, set_seed
from pertpyro._version import __version__
from pertpyro.data import Registry, get_registry, setup_anndata
from pertpyro.model import PerturbationModel
from pertpyro.runs import Run, load_run

__all__ = [
    "ModelFileError",
    "PerturbationModel",
    "Registry",
    "Run",
    "__version__",
    "datasets",
    "evaluation",
    "get_registry",
    "load_run",
    "local_params",
    "plotting",
    "pp",
    "set_seed",
    "setup_anndata",
]
