"""A copy of an h5ad file with its cells in random order, written with bounded memory.

Reading a minibatch of cells scattered over an h5ad file costs a few small reads per cell; reading a run of
consecutive cells costs a few reads per run. When the cells of the file are in a uniformly random order, a run of
consecutive rows *is* a uniformly random set of cells, so minibatches made of a few runs read fast and are, over
the draw of the order, the uniformly random subsets an epoch of a fully shuffled loader would give
(:mod:`pertpyro.data._spans`). :func:`shuffle_h5ad` writes that copy once.

The copy is an external two-pass shuffle of every cells x genes matrix (``X`` and ``layers``), so that the matrices
are held in memory ``chunk_cells`` rows at a time whatever the file's size: the first pass reads the source in
consecutive chunks and writes each chunk's rows to the bucket of their destination (a temporary file beside the
output), the second reads one bucket at a time, puts its rows in their final order and writes them to the output.
Every target is allocated at its final size (the stored values of each row are known from the source's row
pointers), so the writes are plain writes at offsets; the row pointers (8 bytes per cell) stay in memory. Each matrix is read twice and
written twice, sequentially. The per-cell tables (``obs``, ``obsm``, ``obsp``) are permuted in memory; ``var``,
``varm``, ``varp`` and ``uns`` are copied. ``uns["pertpyro_shuffle"]`` records the seed, and marks the file as one
whose consecutive cells may be read together.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata.io import read_elem

SHUFFLE_KEY = "pertpyro_shuffle"
"""``uns`` key of a file written by :func:`shuffle_h5ad` (its value: ``{"seed": seed}``)."""

CHUNK_CELLS = 50_000
"""Cells held in memory at a time by :func:`shuffle_h5ad` (per pass)."""

_PER_CELL = ("obsm", "obsp")
_COPIED = ("var", "varm", "varp", "uns")


def is_shuffled(adata: ad.AnnData) -> bool:
    """Whether ``adata`` comes from a file written by :func:`shuffle_h5ad` (its cells are in random order)."""
    return SHUFFLE_KEY in adata.uns


def shuffle_h5ad(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    seed: int = 0,
    chunk_cells: int = CHUNK_CELLS,
    overwrite: bool = False,
) -> np.ndarray:
    """Write ``dst``, a copy of the h5ad file ``src`` with its cells in a uniformly random order.

    Every element is kept: ``X`` and ``layers`` (CSR or dense) and the per-cell tables are permuted by the same
    order, the per-gene ones and ``uns`` are copied, and ``uns["pertpyro_shuffle"] = {"seed": seed}`` is added. Memory
    is bounded by about two chunks of ``chunk_cells`` cells (see the module docstring); a temporary file of the size
    of the matrices is written beside ``dst`` and removed.

    Parameters
    ----------
    src
        The h5ad file to convert.
    dst
        The file to write (a different path).
    seed
        Seed of the order.
    chunk_cells
        Cells read or written at a time.
    overwrite
        Replace ``dst`` when it exists.

    Returns
    -------
    The order: row ``i`` of ``dst`` is row ``order[i]`` of ``src``.

    Raises
    ------
    FileNotFoundError
        ``src`` does not exist.
    FileExistsError
        ``dst`` exists and ``overwrite`` is false.
    ValueError
        ``dst`` is ``src``, ``chunk_cells`` is not positive, the file holds ``raw`` or a matrix stored as CSC (rows
        cannot be read in chunks from it), or a cells x genes element is neither CSR nor dense.
    """
    src, dst = Path(src), Path(dst)
    if chunk_cells < 1:
        raise ValueError(f"chunk_cells must be positive, got {chunk_cells}.")
    if not src.is_file():
        raise FileNotFoundError(f"No h5ad file at {src}.")
    if dst.resolve() == src.resolve():
        raise ValueError("dst must differ from src: the shuffled copy is written next to the original.")
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst} exists; pass overwrite=True (--overwrite) to replace it.")
    tmp_out, tmp_buckets = dst.with_name(dst.name + ".partial"), dst.with_name(dst.name + ".buckets")
    try:
        with h5py.File(src, "r") as source:
            if "raw" in source:
                raise ValueError(
                    f"{src} holds adata.raw, which this conversion does not copy; write the file without it "
                    "(del adata.raw) or move its counts into a layer."
                )
            matrices = _row_matrices(source)
            n_cells = int(read_elem(source["obs"]).shape[0])
            order = np.random.default_rng(seed).permutation(n_cells)
            _write_tables(source, tmp_out, order, seed)
            with h5py.File(tmp_out, "a") as out:
                for key in matrices:
                    _shuffle_matrix(source[key], out, key, order, chunk_cells, tmp_buckets)
        os.replace(tmp_out, dst)
    finally:
        tmp_out.unlink(missing_ok=True)
        tmp_buckets.unlink(missing_ok=True)
    return order


def _row_matrices(source: h5py.File) -> list[str]:
    """Paths of the cells x genes matrices of an open h5ad file (``X`` and each layer), checked for row reads."""
    keys = (["X"] if "X" in source else []) + [f"layers/{name}" for name in source.get("layers", {})]
    for key in keys:
        element = source[key]
        kind = element.attrs.get("encoding-type", "array")
        if kind == "csc_matrix":
            raise ValueError(
                f"{key} is stored as CSC; rows cannot be read from it in chunks. Convert it to CSR first "
                "(adata.X = adata.X.tocsr(); adata.write_h5ad(path))."
            )
        if kind not in ("csr_matrix", "array"):
            raise ValueError(f"{key} is stored as {kind!r}; only CSR and dense matrices can be shuffled.")
    return keys


def _take_rows(value: Any, order: np.ndarray, *, square: bool = False) -> Any:
    """Rows ``order`` of a per-cell element (DataFrame, array or sparse matrix); also its columns if ``square``."""
    if isinstance(value, pd.DataFrame):
        return value.iloc[order]
    taken = value[order]
    return taken[:, order] if square else taken


def _write_tables(source: h5py.File, path: Path, order: np.ndarray, seed: int) -> None:
    """Write every element of ``source`` but the cells x genes matrices to ``path``, the per-cell ones permuted."""
    parts = {name: read_elem(source[name]) for name in ("obs", *_PER_CELL, *_COPIED) if name in source}
    uns = dict(parts.get("uns", {}))
    uns[SHUFFLE_KEY] = {"seed": int(seed)}
    skeleton = ad.AnnData(
        obs=_take_rows(parts["obs"], order),
        var=parts.get("var"),
        uns=uns,
        obsm={k: _take_rows(v, order) for k, v in parts.get("obsm", {}).items()},
        obsp={k: _take_rows(v, order, square=True) for k, v in parts.get("obsp", {}).items()},
        varm=parts.get("varm"),
        varp=parts.get("varp"),
    )
    skeleton.write_h5ad(path)


def _chunks(n: int, size: int) -> list[tuple[int, int]]:
    return [(start, min(start + size, n)) for start in range(0, n, size)]


class _Rows:
    """Reads runs of rows of a CSR (h5 group) or dense (h5 dataset) matrix; ``row_nnz`` per row for CSR."""

    def __init__(self, element: h5py.Group | h5py.Dataset) -> None:
        self.element, self.sparse = element, isinstance(element, h5py.Group)
        if self.sparse:
            self.indptr = element["indptr"][()].astype(np.int64)
            self.shape = tuple(int(v) for v in element.attrs["shape"])
            self.row_nnz = np.diff(self.indptr)
        else:
            self.shape = tuple(element.shape)

    def read(self, start: int, stop: int) -> Any:
        if not self.sparse:
            return self.element[start:stop]
        lo, hi = self.indptr[start], self.indptr[stop]
        data, indices = self.element["data"][lo:hi], self.element["indices"][lo:hi]
        return sp.csr_matrix((data, indices, self.indptr[start : stop + 1] - lo), shape=(stop - start, self.shape[1]))


class _RowSink:
    """A new CSR or dense element of an open h5 group, allocated whole and filled by blocks of rows in order.

    Allocated at its final size (for CSR from the number of stored values of each row), so that filling it is plain
    writes at offsets: no resizing, and memory does not grow with the matrix.
    """

    def __init__(self, group: h5py.Group, key: str, like: _Rows, row_nnz: np.ndarray | None, n_rows: int) -> None:
        self.sparse = like.sparse
        if self.sparse:
            assert row_nnz is not None
            target = group.create_group(key)
            target.attrs.update(
                {"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": (n_rows, like.shape[1])}
            )
            nnz = int(row_nnz.sum())
            target.create_dataset("data", shape=(nnz,), dtype=like.element["data"].dtype)
            target.create_dataset("indices", shape=(nnz,), dtype=like.element["indices"].dtype)
            target.create_dataset("indptr", data=np.r_[0, np.cumsum(row_nnz)].astype(np.int64))
            self.target: Any = target
        else:
            self.target = group.create_dataset(key, shape=(n_rows, *like.shape[1:]), dtype=like.element.dtype)
            self.target.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
        self.cursor = self.nnz = 0

    def append(self, block: Any) -> None:
        if block.shape[0] == 0:
            return
        if self.sparse:
            block = sp.csr_matrix(block)
            self.target["data"][self.nnz : self.nnz + block.nnz] = block.data
            self.target["indices"][self.nnz : self.nnz + block.nnz] = block.indices
            self.nnz += block.nnz
        else:
            self.target[self.cursor : self.cursor + block.shape[0]] = block
        self.cursor += block.shape[0]

    def read_all(self) -> Any:
        if not self.sparse:
            return self.target[()]
        indptr = self.target["indptr"][()]
        shape = tuple(int(v) for v in self.target.attrs["shape"])
        return sp.csr_matrix((self.target["data"][()], self.target["indices"][()], indptr), shape=shape)


def _shuffle_matrix(
    element: h5py.Group | h5py.Dataset,
    out: h5py.File,
    key: str,
    order: np.ndarray,
    chunk_cells: int,
    tmp_path: Path,
) -> None:
    """Write ``element``'s rows in ``order`` to ``out[key]`` by way of buckets of ``chunk_cells`` destination rows."""
    n_cells = order.shape[0]
    reader = _Rows(element)
    if int(reader.shape[0]) != n_cells:
        raise ValueError(f"{key} has {reader.shape[0]} rows but obs has {n_cells} cells.")
    row_nnz = reader.row_nnz if reader.sparse else None
    destination = np.empty(n_cells, dtype=np.int64)
    destination[order] = np.arange(n_cells)
    bucket_of = destination // chunk_cells
    bounds = _chunks(n_cells, chunk_cells)
    with h5py.File(tmp_path, "w") as tmp:
        buckets = []
        for b, (start, stop) in enumerate(bounds):
            members = np.sort(order[start:stop])  # the bucket's source rows, in source order
            nnz = None if row_nnz is None else row_nnz[members]
            buckets.append(_RowSink(tmp, str(b), reader, nnz, stop - start))
        for start, stop in bounds:  # pass 1: source order -> destination buckets
            block = reader.read(start, stop)
            codes = bucket_of[start:stop]
            for b in np.unique(codes):
                buckets[b].append(block[np.flatnonzero(codes == b)])
        group, name = out.require_group(os.path.dirname(key) or "/"), os.path.basename(key)
        sink = _RowSink(group, name, reader, None if row_nnz is None else row_nnz[order], n_cells)
        for b, (start, stop) in enumerate(bounds):  # pass 2: each bucket in final order
            block = buckets[b].read_all()
            sources = order[start:stop]
            sink.append(block[np.searchsorted(np.sort(sources), sources)])
