"""AnnData to minibatches of tensors: the only bridge between the data layer and the Pyro program.

Counts stay in their original form (sparse CSR, dense, or on disk in a backed AnnData); each minibatch reads and
densifies only its own rows.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
import torch.distributed as dist
from anndata import AnnData
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler

from pertpyro.data._artifact_evidence import evidence_matrix
from pertpyro.data._artifact_labels import artifact_labels
from pertpyro.data._blocks import BlockBatchSampler
from pertpyro.data._registry import Registry, batch_codes, design_matrix, get_counts, guide_rows, perturbation_labels
from pertpyro.data._stream import (
    CountStatistics,
    check_row_readable,
    count_statistics,
    is_backed,
    matching_index_dtypes,
    read_rows,
    row_totals,
)
from pertpyro.module._targets import TargetSubsample

PREFETCH_FACTOR = 4
"""Minibatches each DataLoader worker process reads ahead."""


class ProgramArgs(NamedTuple):
    """Positional arguments of the model and the guide (``_get_fn_args_from_batch`` in scvi's terms)."""

    counts: torch.Tensor | None
    perturbation: torch.Tensor
    batch_index: torch.Tensor
    library: torch.Tensor
    idx: torch.Tensor
    n_cells: int
    artifact: torch.Tensor | None = None
    targets: TargetSubsample | None = None
    artifact_evidence: torch.Tensor | None = None
    guide: torch.Tensor | None = None


class SparseRows(NamedTuple):
    """Rows of counts in CSR form (``indptr``, ``indices``, ``values``), moved between processes and devices sparse.

    Lightning and the DataLoader move the tensors of a named tuple like those of a dict; :meth:`to_dense` builds the
    dense rows where they are used (on the device).
    """

    indptr: torch.Tensor
    indices: torch.Tensor
    values: torch.Tensor
    n_genes: int

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, genes)``."""
        return self.indptr.shape[0] - 1, self.n_genes

    def to_dense(self) -> torch.Tensor:
        """The dense rows, on the device of the tensors."""
        n_rows, n_genes = self.shape
        rows = torch.repeat_interleave(
            torch.arange(n_rows, device=self.indptr.device), self.indptr.diff(), output_size=self.values.shape[0]
        )
        dense = torch.zeros(n_rows, n_genes, dtype=self.values.dtype, device=self.values.device)
        dense[rows, self.indices] = self.values
        return dense


class CellData(Dataset):
    """Per-cell arrays of a registered AnnData, indexed by lists of cells (one item = one minibatch).

    Parameters
    ----------
    adata
        AnnData registered with :func:`pertpyro.setup_anndata` (or sharing its genes and categories).
    registry
        The registry to read columns by (the model's, so codes match the training data).
    artifact_key
        ``obs`` column of boolean artifact labels, added to each minibatch as ``"artifact"`` (``None``: none).
    require_artifact
        Raise a ``ValueError`` when ``artifact_key`` is missing from ``obs`` (otherwise the cells go without labels).
    artifact_evidence
        QC evidence columns of the artifact block: ``(obs column, transform)`` pairs
        (:func:`pertpyro.data._artifact_evidence.evidence_matrix`), added to each minibatch as
        ``"artifact_evidence"`` (``None`` or empty: none).
    guides
        Add each cell's guide row (:func:`pertpyro.data._registry.guide_rows`) to each minibatch as ``"guide"``
        (for per-guide response rates).
    """

    def __init__(
        self,
        adata: AnnData,
        registry: Registry,
        *,
        artifact_key: str | None = None,
        require_artifact: bool = True,
        artifact_evidence: Sequence[tuple[str, str]] | None = None,
        guides: bool = False,
    ) -> None:
        if tuple(map(str, adata.var_names)) != registry.genes:
            raise ValueError(
                "The AnnData's genes differ from the registered genes (names or order); subset it with "
                "adata[:, list(registry.genes)] or set it up again."
            )
        counts = get_counts(adata, registry)
        check_row_readable(counts, name="the registered count matrix")
        # A backed (on-disk) matrix stays on disk: minibatches read their rows, statistics read blocks of rows.
        self.counts = counts if is_backed(counts) else matching_index_dtypes(counts)
        if not (sp.issparse(counts) or is_backed(counts)):
            self.counts = np.asarray(counts)
        # Targets as one code per cell and one design row per distinct label: memory O(cells + labels x targets).
        codes, labels = pd.factorize(perturbation_labels(adata, registry))
        self.label_codes = codes.astype(np.int64)
        self.label_design = design_matrix(np.asarray(labels, dtype=object), registry)
        self.batch_index = batch_codes(adata, registry)
        library = row_totals(self.counts)
        if np.any(library <= 0):
            raise ValueError(f"{int(np.sum(library <= 0))} cells have zero total counts; filter them out first.")
        self.library = library
        self.artifact = None
        if artifact_key is not None and (require_artifact or artifact_key in adata.obs):
            self.artifact = artifact_labels(adata, artifact_key)
        self.artifact_evidence = evidence_matrix(adata, artifact_evidence) if artifact_evidence else None
        self.guide = guide_rows(adata, registry) if guides else None

    @property
    def perturbation(self) -> np.ndarray:
        """Dense multi-hot design of every cell, shape ``(n_cells, n_targets)`` (built on demand: cells x targets)."""
        return self.label_design[self.label_codes]

    @property
    def is_control(self) -> np.ndarray:
        """Whether each cell is a control cell (no target)."""
        return (self.label_design.sum(1) == 0)[self.label_codes]

    def target_frequency(self) -> np.ndarray:
        """Fraction of cells carrying each target (``float32``, as the mean of :attr:`perturbation`)."""
        per_label = np.bincount(self.label_codes, minlength=self.label_design.shape[0]).astype(np.float32)
        return (per_label @ self.label_design) / np.float32(len(self))

    def target_cells(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Number of cells carrying each target, among ``rows`` (default: all cells), ``(T,)``."""
        codes = self.label_codes if rows is None else self.label_codes[np.asarray(rows)]
        per_label = np.bincount(codes, minlength=self.label_design.shape[0]).astype(np.float64)
        return per_label @ self.label_design

    def statistics(self) -> CountStatistics:
        """Per-gene, per-target and control sums of the counts (one chunked pass for a backed matrix)."""
        return count_statistics(self.counts, self.label_codes, self.label_design)

    def __len__(self) -> int:
        return self.label_codes.shape[0]

    def __getitem__(self, idx: list[int] | np.ndarray) -> dict[str, torch.Tensor]:
        idx = np.sort(np.asarray(idx, dtype=np.int64))
        return {"counts": torch.from_numpy(read_rows(self.counts, idx))} | self.cell_fields(idx)

    def cell_fields(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        """Every per-cell entry of a minibatch but the counts, for the cells ``idx`` (in that order)."""
        batch = {
            "perturbation": torch.from_numpy(self.label_design[self.label_codes[idx]]),
            "batch_index": torch.from_numpy(self.batch_index[idx]),
            "library": torch.from_numpy(self.library[idx]),
            "idx": torch.from_numpy(idx),
        }
        if self.artifact is not None:
            batch["artifact"] = torch.from_numpy(self.artifact[idx])
        if self.artifact_evidence is not None:
            batch["artifact_evidence"] = torch.from_numpy(self.artifact_evidence[idx])
        if self.guide is not None:
            batch["guide"] = torch.from_numpy(self.guide[idx])
        return batch


class DistributedBatchSampler(Sampler[list[int]]):
    """Minibatches of one process's share of the cells, for multi-process (DDP) training.

    Every epoch the cells are put in one order shared by all processes (a permutation seeded by ``seed`` and the
    epoch when ``shuffle``, else the data order), cut into ``num_replicas`` disjoint shards whose sizes differ by at
    most one, and this process's shard into the same number of minibatches on every process (DDP needs equal step
    counts). So in one epoch the processes together see every cell exactly once. Batches hold at most
    ``batch_size`` cells (``batch_size + 1`` when the shards differ in size); the ``cells`` plate scales each by its
    own size, so every step stays an unbiased estimate of the full-data ELBO.

    Parameters
    ----------
    n_cells
        Number of cells of the dataset.
    batch_size
        Cells per minibatch (at most; see above).
    shuffle
        Random order every epoch (training) or the data order (validation).
    seed
        Seed of the order; must be the same on every process.
    num_replicas, rank
        Number of processes and this process's rank; ``None`` reads them from ``torch.distributed`` when each epoch
        starts (one process when it is not initialised), so the sampler can be built before the processes are.
    """

    def __init__(
        self,
        n_cells: int,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}.")
        if (num_replicas is None) != (rank is None):
            raise ValueError("Give both num_replicas and rank, or neither.")
        if num_replicas is not None and not 0 <= rank < num_replicas:
            raise ValueError(f"rank must lie in [0, {num_replicas}), got {rank}.")
        self.n_cells, self.batch_size, self.shuffle, self.seed = n_cells, batch_size, shuffle, seed
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch`` (Lightning calls this at the start of every epoch)."""
        self.epoch = epoch

    def _world(self) -> tuple[int, int]:
        if self.num_replicas is not None:
            return self.num_replicas, self.rank
        if dist.is_available() and dist.is_initialized():
            return dist.get_world_size(), dist.get_rank()
        return 1, 0

    def __len__(self) -> int:
        world, _ = self._world()
        return max(1, math.ceil((self.n_cells // world) / self.batch_size))

    def __iter__(self) -> Iterator[list[int]]:
        world, rank = self._world()
        if self.n_cells < world:
            raise ValueError(f"{self.n_cells} cells cannot be split across {world} processes.")
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n_cells)
        else:
            order = np.arange(self.n_cells)
        shard = np.array_split(order, world)[rank]
        for batch in np.array_split(shard, len(self)):
            yield batch.tolist()


class RunBatchSampler(Sampler[np.ndarray]):
    """The minibatches of a batch sampler, each sorted and given as runs ``[start, stop)`` of consecutive cells.

    For datasets that read runs of rows (:class:`pertpyro.data._spans.SpanData`): the same minibatches as
    ``batches`` yields, in the order :class:`CellData` puts their cells in.
    """

    def __init__(self, batches: Sampler[list[int]]) -> None:
        self.batches = batches

    @property
    def generator(self) -> torch.Generator | None:
        """The generator that shuffles the cells, if any (saved with checkpoints)."""
        return getattr(getattr(self.batches, "sampler", None), "generator", None)

    def set_epoch(self, epoch: int) -> None:
        """Pass the epoch on to the batch sampler (when it takes one)."""
        if hasattr(self.batches, "set_epoch"):
            self.batches.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[np.ndarray]:
        for batch in self.batches:
            cells = np.sort(np.asarray(batch, dtype=np.int64))
            cuts = np.flatnonzero(np.diff(cells) != 1) + 1
            yield np.stack([cells[np.r_[0, cuts]], cells[np.r_[cuts - 1, cells.size - 1]] + 1], axis=1)


def make_loader(
    data: CellData | torch.utils.data.Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    pin_memory: bool = False,
    distributed: bool = False,
    block_size: int = 1,
    runs: bool = False,
    num_workers: int = 0,
) -> DataLoader:
    """Minibatch loader over ``data``: one sampler draw is a whole batch, sliced in one vectorised call.

    ``distributed=True`` gives each process of a multi-process run its own shard of the cells
    (:class:`DistributedBatchSampler`). ``block_size > 1`` (with ``shuffle``) makes minibatches of shuffled blocks of
    consecutive cells, for fast reads from a backed AnnData (:class:`~pertpyro.data._blocks.BlockBatchSampler`).
    ``runs=True`` hands ``data`` each minibatch as runs of cells (:class:`RunBatchSampler`), read by ``num_workers``
    persistent worker processes (0: in this process).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    if block_size < 1:
        raise ValueError(f"block_size must be positive, got {block_size}.")
    if distributed and block_size > 1:
        raise ValueError("block_size > 1 is not supported with several processes (DDP); use block_size=1.")
    if shuffle and block_size > 1:
        sampler = BlockBatchSampler(len(data), batch_size, block_size, seed=seed)
    elif distributed:
        sampler = DistributedBatchSampler(len(data), batch_size, shuffle=shuffle, seed=seed)
    else:
        base = (
            RandomSampler(data, generator=torch.Generator().manual_seed(seed)) if shuffle else SequentialSampler(data)
        )
        sampler = BatchSampler(base, batch_size=batch_size, drop_last=False)
    if runs:
        sampler = RunBatchSampler(sampler)
    if num_workers < 0:
        raise ValueError(f"num_workers must be non-negative, got {num_workers}.")
    return DataLoader(
        data,
        sampler=sampler,
        batch_size=None,
        pin_memory=pin_memory,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        prefetch_factor=PREFETCH_FACTOR if num_workers > 0 else None,
    )


def shard_loader(loader: DataLoader) -> DataLoader:
    """The loader ``loader`` made by :func:`make_loader`, with each process of a multi-process run on its own shard.

    Same dataset, batch size, order (shuffled or not) and seed.
    """
    sampler = loader.sampler
    runs = isinstance(sampler, RunBatchSampler)
    if runs:
        sampler = sampler.batches
    if isinstance(sampler, DistributedBatchSampler):
        return loader
    if isinstance(sampler, BlockBatchSampler):
        raise ValueError("block_size > 1 is not supported with several processes (DDP); use block_size=1.")
    if not (isinstance(sampler, BatchSampler) and isinstance(sampler.sampler, (RandomSampler, SequentialSampler))):
        raise TypeError(
            "Multi-process training needs loaders made by pertpyro's make_loader (not span minibatches; or with a "
            f"DistributedBatchSampler as sampler), got a sampler of type {type(sampler).__name__}."
        )
    shuffle = isinstance(sampler.sampler, RandomSampler)
    generator = sampler.sampler.generator if shuffle else None
    seed = generator.initial_seed() if generator is not None else 0
    return make_loader(
        loader.dataset,
        batch_size=sampler.batch_size,
        shuffle=shuffle,
        seed=seed,
        pin_memory=loader.pin_memory,
        distributed=True,
        runs=runs,
        num_workers=loader.num_workers,
    )


def program_args(
    batch: dict[str, Any],
    n_cells: int,
    *,
    with_counts: bool = True,
    targets: TargetSubsample | None = None,
) -> ProgramArgs:
    """Model/guide arguments from a loader batch; ``n_cells`` is the size of the ``cells`` plate.

    ``targets``: the minibatch's targets and their weights, for a step that reads only their global sites
    (:func:`pertpyro.module._targets.present_targets`); ``None``: every target.
    """
    counts = batch["counts"] if with_counts else None
    if isinstance(counts, SparseRows):  # rows read sparse stay sparse up to the device
        counts = counts.to_dense()
    return ProgramArgs(
        counts,
        batch["perturbation"],
        batch["batch_index"],
        batch["library"],
        batch["idx"],
        n_cells,
        batch.get("artifact"),
        targets,
        batch.get("artifact_evidence"),
        batch.get("guide"),
    )


def standalone_args(batch: dict[str, torch.Tensor]) -> ProgramArgs:
    """Model/guide arguments treating the cells of ``batch`` as a data set of their own (plate scale 1)."""
    n = batch["counts"].shape[0]
    return program_args(batch | {"idx": torch.arange(n)}, n)
