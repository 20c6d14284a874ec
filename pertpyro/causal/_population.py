"""The cells a causal query averages over, and the weights that give each arm a label's batch composition."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from pertpyro.data._loader import CellData


def subsample_rows(rows: np.ndarray, max_cells: int | None, seed: int) -> np.ndarray:
    """``rows``, or a sorted random subset of ``max_cells`` of them drawn with ``seed``."""
    if max_cells is not None and len(rows) > max_cells:
        rows = np.sort(np.random.default_rng(seed).choice(rows, size=max_cells, replace=False))
    return rows


def subset_batch(data: CellData, rows: np.ndarray) -> dict[str, torch.Tensor]:
    """The cells ``rows`` of ``data`` as one standalone minibatch (``idx`` numbers them from 0)."""
    batch = data[rows]
    batch["idx"] = torch.arange(len(rows))
    return batch


def batch_weights(
    labels: Sequence[str],
    population_batches: np.ndarray,
    train_labels: np.ndarray,
    train_batches: np.ndarray,
    n_batches: int,
) -> np.ndarray:
    """Weights ``(labels, cells)`` that give the population each label's training batch composition.

    A population cell of batch ``b`` weighs ``share_label(b) / share_population(b)``; labels without training cells
    keep the population's composition (weight 1).
    """
    n_batches = max(n_batches, 1)
    base = np.bincount(population_batches, minlength=n_batches) / len(population_batches)
    out = np.ones((len(labels), len(population_batches)))
    for i, label in enumerate(labels):
        rows = train_labels == label
        if rows.any():
            share = np.bincount(train_batches[rows], minlength=n_batches) / rows.sum()
            out[i] = share[population_batches] / np.maximum(base[population_batches], 1e-12)
    return out


__all__ = ["batch_weights", "subsample_rows", "subset_batch"]
