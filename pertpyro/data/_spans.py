"""Minibatches read as contiguous spans of a shuffled on-disk store, in DataLoader worker processes.

A file written by :func:`pertpyro.data.shuffle_h5ad` holds its cells in a uniformly random order. Every epoch,
:class:`SpanBatchSampler` cuts the cells into spans of ``span_size`` consecutive rows, starting from an offset drawn
afresh, shuffles the spans, and makes each minibatch of ``batch_size / span_size`` of them. So:

- every epoch visits each cell exactly once (the spans partition the cells);
- each minibatch, over the draw of the file's order, is a uniformly random set of ``batch_size`` cells, as under a
  fully shuffled loader, so the ``cells`` plate's ``N / B`` scaling keeps every step an unbiased estimate of the ELBO,
  and the inclusion probabilities that ``sparse_targets`` relies on are unchanged;
- minibatches differ across epochs: the offset moves the span boundaries and the spans meet other spans. What
  differs from a full shuffle is that cells within ``span_size`` rows of each other share minibatches more often
  across epochs than other pairs, a correlation between epochs, not a bias within one.

A minibatch then costs ``batch_size / span_size`` contiguous reads (anndata's
:func:`anndata.io.sparse_dataset` slices: ``indptr``, ``data`` and ``indices`` of each span) instead of a few reads per
cell. :class:`SpanData` does those reads. For a GPU it returns the counts in CSR form
(:class:`~pertpyro.data._loader.SparseRows`), which cross from the worker process to the training process and to the
device sparse (a few times smaller than dense rows) and are densified there
(:func:`pertpyro.data._loader.program_args`); for the CPU the worker densifies them, which takes that work off the
training process. With ``num_workers`` worker processes
(:func:`make_span_loader`; persistent across epochs, each reading ahead ``prefetch_factor`` minibatches), the reads
run while the training process computes the step. Each worker opens the file itself (h5py handles are not shared
across processes).

Validation uses a contiguous window of the shuffled store (:func:`span_holdout`), which, the order being random, is a
uniformly random hold-out that is read in a few long reads.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Iterator
from typing import Any

import h5py
import numpy as np
import scipy.sparse as sp
import torch
from anndata.io import sparse_dataset
from torch.utils.data import DataLoader, Dataset, Sampler

from pertpyro.data._loader import CellData, SparseRows
from pertpyro.data._stream import is_backed

SPAN_SIZE = 64
"""Consecutive cells per span when a shuffled backed store is trained from (``train(span_size=None)``)."""

PREFETCH_FACTOR = 4
"""Minibatches each worker reads ahead."""


class SpanBatchSampler(Sampler[np.ndarray]):
    """Minibatches as arrays of ``[start, stop)`` spans of consecutive cells (see the module docstring).

    Parameters
    ----------
    n_cells
        Number of cells.
    batch_size
        Cells per minibatch (the last one may be smaller).
    span_size
        Consecutive cells per span.
    shuffle
        Spans from a random offset in random order, re-drawn every epoch (training); ``False``: consecutive
        minibatches in the data order (validation).
    seed
        Seed of the spans; epoch ``e`` uses the spans drawn from ``(seed, e)``.
    """

    def __init__(self, n_cells: int, batch_size: int, span_size: int, *, shuffle: bool = True, seed: int = 0) -> None:
        if n_cells < 1:
            raise ValueError(f"n_cells must be positive, got {n_cells}.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}.")
        if span_size < 1:
            raise ValueError(f"span_size must be positive, got {span_size}.")
        self.n_cells, self.batch_size, self.span_size = n_cells, batch_size, span_size
        self.shuffle, self.seed = shuffle, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the spans of ``epoch`` (Lightning calls this at the start of every epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.n_cells / self.batch_size)

    def spans(self) -> np.ndarray:
        """The epoch's spans in the order they are visited, shape ``(n_spans, 2)``."""
        n, size = self.n_cells, self.span_size
        if not self.shuffle:
            return np.array([[0, n]])
        rng = np.random.default_rng([self.seed, self.epoch])
        offset = int(rng.integers(min(size, n)))
        bounds = np.unique(np.r_[0, np.arange(offset, n, size), n])
        pairs = np.stack([bounds[:-1], bounds[1:]], axis=1)
        return pairs[rng.permutation(pairs.shape[0])]

    def __iter__(self) -> Iterator[np.ndarray]:
        pairs = self.spans()
        self.epoch += 1  # new spans next epoch also when nobody calls set_epoch
        ends = np.cumsum(pairs[:, 1] - pairs[:, 0])  # position of each span's end in the epoch's cell sequence
        begins = ends - (pairs[:, 1] - pairs[:, 0])
        for first in range(0, self.n_cells, self.batch_size):
            last = min(first + self.batch_size, self.n_cells)
            hit = slice(np.searchsorted(ends, first, side="right"), np.searchsorted(begins, last, side="left"))
            starts = pairs[hit, 0] + np.maximum(first - begins[hit], 0)
            stops = pairs[hit, 1] - np.maximum(ends[hit] - last, 0)
            yield np.stack([starts, stops], axis=1)


def span_holdout(n_cells: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation rows of a shuffled store: validation is a window of consecutive rows at a random start.

    In a store whose cells are in random order the window is a uniformly random set of cells.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"validation_fraction must lie in (0, 1), got {fraction}.")
    n_val = min(n_cells - 1, max(1, int(round(fraction * n_cells))))
    if n_val < 1:
        raise ValueError(f"{n_cells} cells leave none to hold out.")
    start = int(np.random.default_rng(seed).integers(n_cells - n_val + 1))
    val = np.arange(start, start + n_val)
    return np.r_[np.arange(start), np.arange(start + n_val, n_cells)], val


class SpanData(Dataset):
    """Minibatches of some rows of a :class:`CellData`, each read as a few contiguous spans.

    Parameters
    ----------
    data
        The cells; its counts may be backed (then each process opens the file on its first read) or in memory.
    rows
        The rows of ``data`` this dataset holds (sorted; default: all). Items are arrays of ``[start, stop)`` spans of
        positions in ``rows`` (:class:`SpanBatchSampler`); ``"idx"`` of a minibatch holds these positions.
    sparse
        Return sparse counts as :class:`~pertpyro.data._loader.SparseRows` (for a GPU: less to copy), else dense.
    """

    def __init__(self, data: CellData, rows: np.ndarray | None = None, *, sparse: bool = False) -> None:
        self.sparse = sparse
        self.rows = np.arange(len(data)) if rows is None else np.asarray(rows, dtype=np.int64)
        if self.rows.size and np.any(np.diff(self.rows) <= 0):
            raise ValueError("rows must be sorted and unique.")
        counts = data.counts
        self.memory = None if is_backed(counts) else counts
        self.location: tuple[str, str] | None = None
        if self.memory is None:
            element = getattr(counts, "group", counts)  # anndata's CSRDataset keeps its h5py group
            if not isinstance(element, h5py.Group | h5py.Dataset):
                raise TypeError(f"Cannot read spans from a backed matrix of type {type(counts).__name__}.")
            self.location = (str(element.file.filename), str(element.name))
        self.cells = copy.copy(data)  # the per-cell arrays, shared; the open file handle stays behind
        self.cells.counts = None
        self._reader: Any = None
        self._pid = -1

    def __len__(self) -> int:
        return self.rows.shape[0]

    def __getstate__(self) -> dict[str, Any]:  # for workers started by spawn: reopen the file there
        return self.__dict__ | {"_reader": None, "_pid": -1}

    def _matrix(self) -> Any:
        if self.memory is not None:
            return self.memory
        if self._pid != os.getpid() or self._reader is None:  # first read in this process (e.g. a worker)
            path, key = self.location  # type: ignore[misc]
            element = h5py.File(path, "r")[key]
            self._reader = sparse_dataset(element) if isinstance(element, h5py.Group) else element
            self._pid = os.getpid()
        return self._reader

    def store_spans(self, spans: np.ndarray) -> np.ndarray:
        """Spans of positions in ``rows`` as spans of rows of the data (split where ``rows`` skips rows)."""
        out = []
        for start, stop in np.asarray(spans, dtype=np.int64).reshape(-1, 2):
            rows = self.rows[start:stop]
            if rows.size == 0:
                continue
            cuts = np.flatnonzero(np.diff(rows) != 1) + 1
            firsts, lasts = rows[np.r_[0, cuts]], rows[np.r_[cuts - 1, rows.size - 1]]
            out.append(np.stack([firsts, lasts + 1], axis=1))
        return np.concatenate(out) if out else np.zeros((0, 2), dtype=np.int64)

    def __getitem__(self, spans: np.ndarray) -> dict[str, Any]:
        spans = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
        positions = np.concatenate([np.arange(a, b) for a, b in spans])
        pieces = self.store_spans(spans)
        matrix = self._matrix()
        blocks = [matrix[a:b] for a, b in pieces]
        if self.sparse and any(sp.issparse(b) for b in blocks):
            csr = sp.vstack(blocks, format="csr", dtype=np.float32)
            counts: SparseRows | torch.Tensor = SparseRows(
                torch.from_numpy(csr.indptr.astype(np.int64)),
                torch.from_numpy(csr.indices.astype(np.int64)),
                torch.from_numpy(csr.data),
                int(csr.shape[1]),
            )
        else:
            dense = [b.toarray() if sp.issparse(b) else np.asarray(b) for b in blocks]
            counts = torch.from_numpy(np.concatenate(dense).astype(np.float32, copy=False))
        cells = self.rows[positions]
        return {"counts": counts} | self.cells.cell_fields(cells) | {"idx": torch.from_numpy(positions)}


def make_span_loader(
    data: SpanData,
    *,
    batch_size: int,
    span_size: int,
    shuffle: bool,
    seed: int = 0,
    num_workers: int = 1,
    pin_memory: bool = False,
) -> DataLoader:
    """DataLoader of span minibatches (:class:`SpanBatchSampler`), read by ``num_workers`` persistent workers.

    ``num_workers=0`` reads in the training process, between steps.
    """
    if num_workers < 0:
        raise ValueError(f"num_workers must be non-negative, got {num_workers}.")
    sampler = SpanBatchSampler(len(data), batch_size, span_size, shuffle=shuffle, seed=seed)
    return DataLoader(
        data,
        sampler=sampler,
        batch_size=None,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        prefetch_factor=PREFETCH_FACTOR if num_workers > 0 else None,
        pin_memory=pin_memory,
    )
