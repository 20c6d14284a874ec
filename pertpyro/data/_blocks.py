"""Minibatches made of blocks of consecutive cells: fast reads from an on-disk (backed) AnnData.

Reading cells scattered over an h5ad file costs two small reads per cell; reading a run of consecutive cells costs
two reads per run. With ``block_size`` > 1 the cells are cut into blocks of ``block_size`` consecutive cells, the
blocks are shuffled every epoch, and each minibatch takes ``batch_size / block_size`` blocks. Every cell is still
seen once per epoch, and each minibatch remains an unbiased estimate of the full-data ELBO (the ``cells`` plate
scales it), but cells stored next to each other (e.g. sorted by perturbation) share minibatches more often than
under a fully random order, which makes the gradient noisier when the file is sorted. ``block_size=1`` is the fully
random order.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler


def _check(batch_size: int, block_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    if block_size < 1:
        raise ValueError(f"block_size must be positive, got {block_size}.")


class BlockBatchSampler(Sampler[list[int]]):
    """Minibatches of shuffled blocks of ``block_size`` consecutive cells (see the module docstring).

    Parameters
    ----------
    n_cells
        Number of cells.
    batch_size
        Cells per minibatch (the last one may be smaller).
    block_size
        Consecutive cells per block.
    seed
        Seed of the block order; epoch ``e`` uses the order seeded by ``(seed, e)``.
    """

    def __init__(self, n_cells: int, batch_size: int, block_size: int, *, seed: int = 0) -> None:
        _check(batch_size, block_size)
        self.n_cells, self.batch_size, self.block_size, self.seed = n_cells, batch_size, block_size, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the block order of ``epoch``."""
        self.epoch = epoch

    def __len__(self) -> int:
        return max(1, math.ceil(self.n_cells / self.batch_size))

    def __iter__(self) -> Iterator[list[int]]:
        n_blocks = math.ceil(self.n_cells / self.block_size)
        blocks = np.random.default_rng([self.seed, self.epoch]).permutation(n_blocks)
        starts = blocks * self.block_size
        order = (starts[:, None] + np.arange(self.block_size)).ravel()
        order = order[order < self.n_cells]  # the last block may be short
        self.epoch += 1  # a new order next epoch also when nobody calls set_epoch
        for start in range(0, self.n_cells, self.batch_size):
            yield order[start : start + self.batch_size].tolist()


def holdout_rows(n_cells: int, fraction: float, seed: int, block_size: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation rows of a random hold-out of ``fraction`` of the cells.

    ``block_size=1`` holds out single random cells (the training rows in random order). Larger blocks hold out
    whole blocks of consecutive cells and return the training rows sorted, so that consecutive training cells stay
    consecutive on disk.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"validation_fraction must lie in (0, 1), got {fraction}.")
    if block_size == 1:
        order = np.random.default_rng(seed).permutation(n_cells)
        n_val = max(1, int(round(fraction * n_cells)))
        return order[n_val:], order[:n_val]
    n_blocks = math.ceil(n_cells / block_size)
    n_val_blocks = min(n_blocks - 1, max(1, int(round(fraction * n_blocks))))
    if n_val_blocks < 1:
        raise ValueError(f"{n_cells} cells in blocks of {block_size} leave no block to hold out; lower block_size.")
    val_blocks = np.random.default_rng(seed).choice(n_blocks, size=n_val_blocks, replace=False)
    is_val = np.zeros(n_cells, dtype=bool)
    for_blocks = (np.sort(val_blocks)[:, None] * block_size + np.arange(block_size)).ravel()
    is_val[for_blocks[for_blocks < n_cells]] = True
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)
