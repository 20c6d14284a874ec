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

A minibatch then costs two contiguous h5py reads per span (``data`` and ``indices``; ``indptr`` is read once
and held in memory) instead of two per cell. :class:`SpanData` does those reads. For a GPU it returns the counts in CSR form
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
from torch.utils.data import DataLoader, Dataset, Sampler

from pertpyro.data._loader import PREFETCH_FACTOR, CellData, SparseRows, make_loader
from pertpyro.data._stream import is_backed

SPAN_SIZE = 32
"""Consecutive cells per span when a shuffled backed store is trained from (``train(span_size=None)``).

Reading a 4096-cell minibatch of a 200k x 2k shuffled store (warm page cache) took 0.57 s in spans of 1 cell, 0.16 s
in spans of 8, about 0.1 s in spans of 32, 64 or 128: 32 is where the read time stops falling.
"""


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
        The rows of ``data`` this dataset holds (default: all). Items are arrays of ``[start, stop)`` spans of positions
        in ``rows`` (:class:`SpanBatchSampler`); ``"idx"`` of a minibatch holds these positions, the other entries
        the cells in the order of their rows (as :class:`CellData` returns them).
    sparse
        Return sparse counts as :class:`~pertpyro.data._loader.SparseRows` (for a GPU: less to copy), else dense.
    """

    def __init__(self, data: CellData, rows: np.ndarray | None = None, *, sparse: bool = False) -> None:
        self.sparse = sparse
        self.rows = np.arange(len(data)) if rows is None else np.asarray(rows, dtype=np.int64)
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
            self._reader = _CSRRows(element) if isinstance(element, h5py.Group) else element
            self._pid = os.getpid()
        return self._reader

    def store_spans(self, spans: np.ndarray) -> np.ndarray:
        """The runs of consecutive rows of the data that hold the positions ``spans`` of ``rows`` (sorted)."""
        rows = np.sort(self.rows[_positions(spans)])
        if rows.size == 0:
            return np.zeros((0, 2), dtype=np.int64)
        cuts = np.flatnonzero(np.diff(rows) != 1) + 1
        return np.stack([rows[np.r_[0, cuts]], rows[np.r_[cuts - 1, rows.size - 1]] + 1], axis=1)

    def __getitem__(self, spans: np.ndarray) -> dict[str, Any]:
        positions = _positions(spans)
        pieces = self.store_spans(spans)
        matrix = self._matrix()
        if isinstance(matrix, _CSRRows):
            block: Any = matrix.read(pieces)
        else:
            parts = [matrix[a:b] for a, b in pieces]
            block = sp.vstack(parts, format="csr") if sp.issparse(parts[0]) else np.concatenate(parts)
        if self.sparse and sp.issparse(block):
            counts: SparseRows | torch.Tensor = SparseRows(
                torch.from_numpy(block.indptr.astype(np.int64)),
                torch.from_numpy(block.indices.astype(np.int64)),
                torch.from_numpy(block.data.astype(np.float32, copy=False)),
                int(block.shape[1]),
            )
        else:
            dense = block.toarray() if sp.issparse(block) else np.asarray(block)
            counts = torch.from_numpy(dense.astype(np.float32, copy=False))
        cells = np.sort(self.rows[positions])  # the order of the rows read, as CellData's
        return {"counts": counts} | self.cells.cell_fields(cells) | {"idx": torch.from_numpy(positions)}


def _positions(spans: np.ndarray) -> np.ndarray:
    """The positions covered by ``[start, stop)`` spans, in order."""
    spans = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    lengths = spans[:, 1] - spans[:, 0]
    offsets = np.cumsum(lengths) - lengths
    return np.repeat(spans[:, 0] - offsets, lengths) + np.arange(int(lengths.sum()))


class _CSRRows:
    """Runs of rows of a CSR matrix stored in an h5 group, two h5py reads per run (``indptr`` is held in memory).

    Slicing anndata's backed ``CSRDataset`` costs several milliseconds per call on top of the reads, which dominates
    when a minibatch is many short runs; reading ``data`` and ``indices`` directly does not.
    """

    def __init__(self, group: h5py.Group) -> None:
        self.data, self.indices = group["data"], group["indices"]
        self.indptr = group["indptr"][()].astype(np.int64)  # 8 bytes per cell
        self.shape = tuple(int(v) for v in group.attrs["shape"])

    def read(self, pieces: np.ndarray) -> sp.csr_matrix:
        lo, hi = self.indptr[pieces[:, 0]], self.indptr[pieces[:, 1]]
        data = np.concatenate([self.data[a:b] for a, b in zip(lo, hi, strict=True)])
        indices = np.concatenate([self.indices[a:b] for a, b in zip(lo, hi, strict=True)])
        lengths = [self.indptr[a + 1 : b + 1] - self.indptr[a] for a, b in pieces]
        offsets = np.cumsum(np.r_[0, hi - lo])[:-1]
        indptr = np.r_[0, np.concatenate([ln + off for ln, off in zip(lengths, offsets, strict=True)])]
        return sp.csr_matrix((data, indices, indptr), shape=(indptr.size - 1, self.shape[1]))


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
    """DataLoader of minibatches of ``data`` read by ``num_workers`` persistent workers (0: in this process).

    ``span_size > 1``: spans of consecutive cells (:class:`SpanBatchSampler`). ``span_size=1``: the minibatches of
    :func:`~pertpyro.data._loader.make_loader` (cells drawn at random by the same seeded sampler, hence the same fit
    as from memory), each read as its runs of consecutive cells.
    """
    if num_workers < 0:
        raise ValueError(f"num_workers must be non-negative, got {num_workers}.")
    if span_size == 1:
        return make_loader(
            data,
            batch_size=batch_size,
            shuffle=shuffle,
            seed=seed,
            pin_memory=pin_memory,
            runs=True,
            num_workers=num_workers,
        )
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
