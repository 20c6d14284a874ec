"""The generative model, its guide, and the user-facing model class."""

from pertpyro.models import _sites as sites
from pertpyro.models._model import PerturbationModel
from pertpyro.models._program import PerturbationGuide, PerturbationProgram

__all__ = ["PerturbationGuide", "PerturbationProgram"]
