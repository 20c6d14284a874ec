"""The user-facing model class: :class:`PerturbationModel`, assembled from one mixin per family of methods."""

from pertpyro.model._model import PerturbationModel

__all__ = ["PerturbationModel"]
