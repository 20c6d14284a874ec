"""Posterior draws of held-out shifts for the benchmark, batch-matched and batch-standardised from one simulation.

Two quantities of the ATE engine average the *same* simulated control cells with different weights: the
batch-matched shift (``model.predict_shift(..., basal="control")``: each arm at the batch composition of the label's
training cells) and the batch-standardised draws whose intervals ``pertpyro evaluate`` scores (``model.ate_draws``,
in :func:`~pertpyro.evaluation.calibration_report`), so :func:`heldout_draws` simulates them once and weights them
twice. Under the same seed the
two outputs equal those two calls' draws (same latents, same count noise), at half the cost.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from pertpyro.causal._ate import label_shift_draws
from pertpyro.causal._expected import N_COUNTS
from pertpyro.causal._population import batch_weights, subsample_rows, subset_batch
from pertpyro.data._registry import perturbation_labels
from pertpyro.posterior._protocol import FittedModel, require_trained


def heldout_draws(
    model: FittedModel,
    labels: Sequence[str],
    *,
    n_samples: int = 100,
    seed: int = 0,
    max_cells: int | None = 2000,
    n_counts: int = N_COUNTS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draws of each label's shift against control, batch-matched and batch-standardised, from one simulation.

    Parameters
    ----------
    model
        A trained :class:`~pertpyro.PerturbationModel`.
    labels
        Perturbation labels.
    n_samples
        Posterior draws.
    seed
        Seed of the draws and of the population subsample (as in :meth:`~pertpyro.PerturbationModel.ate`).
    max_cells
        Training control cells of the population, at most.
    n_counts
        Count replicates per cell and draw (:mod:`pertpyro.causal._expected`).

    Returns
    -------
    ``(matched, standard)``, each ``(n_samples, labels, genes)``: ``matched.mean(0)`` is
    ``model.predict_shift(labels, n_samples=n_samples, seed=seed, basal="control")``, ``standard`` is
    ``model.ate_draws(labels, n_samples=n_samples, seed=seed)`` (both up to float rounding when
    ``n_counts`` is their default).
    """
    require_trained(model)
    labels = [str(label) for label in labels]
    if not labels:
        raise ValueError("Give at least one perturbation label.")
    registry = model.registry
    train_labels = perturbation_labels(model.adata, registry)
    rows = subsample_rows(np.flatnonzero(train_labels == registry.control), max_cells, seed)  # as in model.ate
    population = subset_batch(model.cell_data, rows)
    matched = batch_weights(  # (labels, cells)
        labels, population["batch_index"].numpy(), train_labels, model.cell_data.batch_index, registry.n_batches
    )
    weights = np.stack([matched, np.ones_like(matched)])  # (2, labels, cells)
    draws = label_shift_draws(
        model.program,
        model.guide,
        population,
        labels,
        model.registry,
        n_samples=n_samples,
        weights=weights,
        seed=seed,
        n_counts=n_counts,
    )  # (S, 2, labels, G)
    return draws[:, 0], draws[:, 1]
