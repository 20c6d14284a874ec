"""AnnData contract, registry, datasets, simulator, statistics of counts and minibatch loading."""

from pertpyro.data._controls import add_negative_controls, negative_control_labels, restore_controls
from pertpyro.data._datasets import collectri, papalexi2021
from pertpyro.data._insilico_doublets import add_doublets
from pertpyro.data._loader import CellData
from pertpyro.data._registry import Registry, batch_codes, design_matrix, get_counts, get_registry
from pertpyro.data._setup import setup_anndata, validate_counts
from pertpyro.data._shuffle import shuffle_h5ad
from pertpyro.data._statistics import (
    TARGET_SUM,
    LabelMoments,
    label_moments,
    log_normalise,
    mean_expression,
    observed_shift,
    strong_perturbations,
)

__all__ = [
    "TARGET_SUM",
    "CellData",
    "add_doublets",
    "LabelMoments",
    "add_negative_controls",
    "batch_codes",
    "collectri",
    "design_matrix",
    "get_counts",
    "label_moments",
    "log_normalise",
    "mean_expression",
    "negative_control_labels",
    "observed_shift",
    "papalexi2021",
    "restore_controls",
    "shuffle_h5ad",
    "strong_perturbations",
    "validate_counts",
]
