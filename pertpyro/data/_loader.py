"""AnnData to minibatches of tensors: the only bridge between the data layer and the Pyro program.

Counts stay in their original (sparse CSR or dense) form; each minibatch slices its rows and densifies only those.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
import torch
from anndata import AnnData
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from pertpyro.data._registry import Registry, batch_codes, design_matrix, get_counts, perturbation_labels


class ProgramArgs(NamedTuple):
    """Positional arguments of the model and the guide (``_get_fn_args_from_batch`` in scvi's terms)."""

    counts: torch.Tensor | None
    perturbation: torch.Tensor
    batch_index: torch.Tensor
    library: torch.Tensor
    idx: torch.Tensor
    n_cells: int


class CellData(Dataset):
    """Per-cell arrays of a registered AnnData, indexed by lists of cells (one item = one minibatch).

    Parameters
    ----------
    adata
        AnnData registered with :func:`pertpyro.setup_anndata` (or sharing its genes and categories).
    registry
        The registry to read columns by (the model's, so codes match the training data).
    """

    def __init__(self, adata: AnnData, registry: Registry) -> None:
        if tuple(map(str, adata.var_names)) != registry.genes:
            raise ValueError(
                "The AnnData's genes differ from the registered genes (names or order); subset it with "
                "adata[:, list(registry.genes)] or set it up again."
            )
        counts = get_counts(adata, registry)
        self.counts = counts if sp.issparse(counts) else np.asarray(counts)
        self.perturbation = design_matrix(perturbation_labels(adata, registry), registry)
        self.batch_index = batch_codes(adata, registry)
        library = np.asarray(counts.sum(axis=1)).ravel().astype(np.float32)
        if np.any(library <= 0):
            raise ValueError(f"{int(np.sum(library <= 0))} cells have zero total counts; filter them out first.")
        self.library = library

    def __len__(self) -> int:
        return self.perturbation.shape[0]

    def __getitem__(self, idx: list[int] | np.ndarray) -> dict[str, torch.Tensor]:
        idx = np.sort(np.asarray(idx, dtype=np.int64))
        rows = self.counts[idx]
        rows = rows.toarray() if sp.issparse(rows) else rows
        return {
            "counts": torch.from_numpy(np.asarray(rows, dtype=np.float32)),
            "perturbation": torch.from_numpy(self.perturbation[idx]),
            "batch_index": torch.from_numpy(self.batch_index[idx]),
            "library": torch.from_numpy(self.library[idx]),
            "idx": torch.from_numpy(idx),
        }


def make_loader(
    data: CellData, *, batch_size: int, shuffle: bool, seed: int = 0, pin_memory: bool = False
) -> DataLoader:
    """Minibatch loader over ``data``: one sampler draw is a whole batch, sliced in one vectorised call."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    base = RandomSampler(data, generator=torch.Generator().manual_seed(seed)) if shuffle else SequentialSampler(data)
    sampler = BatchSampler(base, batch_size=batch_size, drop_last=False)
    return DataLoader(data, sampler=sampler, batch_size=None, pin_memory=pin_memory)


def program_args(batch: dict[str, torch.Tensor], n_cells: int, *, with_counts: bool = True) -> ProgramArgs:
    """Model/guide arguments from a loader batch; ``n_cells`` is the size of the ``cells`` plate."""
    return ProgramArgs(
        batch["counts"] if with_counts else None,
        batch["perturbation"],
        batch["batch_index"],
        batch["library"],
        batch["idx"],
        n_cells,
    )
