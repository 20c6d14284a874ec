"""What the functions above the program read of a trained model: a typed protocol of the user class.

Posterior export, calibration and evaluation take any object with these attributes and methods (the user class
:class:`pertpyro.PerturbationModel` is one), so they never import the class and never reach its private state.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import pandas as pd
from anndata import AnnData

from pertpyro.data._loader import CellData
from pertpyro.data._registry import Registry
from pertpyro.module._program import PerturbationGuide, PerturbationProgram
from pertpyro.posterior._intervals import IntervalCalibration


class FittedModel(Protocol):
    """A trained model: its registry, training cells, program and guide, and its population queries."""

    registry: Registry
    adata: AnnData
    cell_data: CellData
    program: PerturbationProgram
    guide: PerturbationGuide
    init_kwargs: dict[str, Any]
    is_trained: bool
    interval_calibration_: IntervalCalibration | None

    def ate(self, *args: Any, **kwargs: Any) -> pd.DataFrame:
        """Average treatment effects with credible intervals (tidy)."""
        ...

    def ate_draws(self, *args: Any, **kwargs: Any) -> np.ndarray:
        """Posterior draws of the shifts behind :meth:`ate`, ``(n_samples, labels, genes)``."""
        ...

    def predict_shift(self, *args: Any, **kwargs: Any) -> pd.DataFrame:
        """Posterior-mean observed shift per label, ``labels x genes``."""
        ...

    def iwelbo(self, *args: Any, **kwargs: Any) -> float:
        """Mean importance-weighted ELBO of cells."""
        ...

    def train(self, *args: Any, **kwargs: Any) -> pd.DataFrame:
        """Fit the model (used to refit replicas with the same settings)."""
        ...


def require_trained(model: FittedModel) -> None:
    """A ``RuntimeError`` unless ``model`` has been trained."""
    if not model.is_trained:
        raise RuntimeError("The model is not trained yet: call model.train() first.")


__all__ = ["FittedModel", "require_trained"]
