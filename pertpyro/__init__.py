"""pertpyro: Bayesian generative models for single-cell CRISPR perturbation screens, in Pyro."""

from pertpyro._version import __version__  # first: the subpackages read it

# isort: split
from pertpyro import datasets, evaluate, evaluation, plotting, pp
from pertpyro._settings import local_params, set_seed
from pertpyro.data import Registry, get_registry, setup_anndata
from pertpyro.models import PerturbationModel
