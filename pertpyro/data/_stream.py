"""Count matrices that may live on disk: one chunked pass for every whole-matrix statistic.

A backed AnnData (``anndata.read_h5ad(path, backed="r")``) keeps ``X`` in the h5ad file; slicing it reads only the
rows asked for. pertpyro never densifies or loads such a matrix whole: per-cell library sizes and the per-gene and
per-target sums that initialise the model are accumulated over blocks of rows (:func:`iter_row_blocks`), and the
loader reads each minibatch's rows by index. Host memory then grows with the cells only through per-cell vectors
(a few bytes per cell), not with cells x genes.

An in-memory matrix is one block, so the statistics computed here are, bit for bit, those of the whole matrix.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
import scipy.sparse as sp

CHUNK_ROWS = 10_000
"""Rows of a backed matrix read at a time by the chunked passes."""


def is_backed(matrix: Any) -> bool:
    """Whether ``matrix`` is an on-disk (backed) matrix rather than a NumPy array or SciPy sparse matrix."""
    return not (sp.issparse(matrix) or isinstance(matrix, np.ndarray))


def check_row_readable(matrix: Any, *, name: str) -> None:
    """Reject backed matrices whose rows cannot be read efficiently (CSC on disk).

    Raises
    ------
    ValueError
        For a backed CSC matrix: every minibatch would read the whole file.
    """
    if is_backed(matrix) and getattr(matrix, "format", None) == "csc":
        raise ValueError(
            f"{name} is a backed CSC matrix; reading cells (rows) from it reads the whole file. Convert the file to "
            "CSR once (adata = anndata.read_h5ad(path); adata.X = adata.X.tocsr(); adata.write_h5ad(path)) "
            "or load it into memory."
        )


def iter_row_blocks(
    matrix: Any, chunk_rows: int | None = None
) -> Iterator[tuple[int, int, np.ndarray | sp.csr_matrix]]:
    """Consecutive blocks of rows of a cells x genes matrix as ``(start, stop, block)``.

    An in-memory matrix comes back as a single block (itself, no copy); a backed one in blocks of ``chunk_rows``
    rows (default :data:`CHUNK_ROWS`), each read from disk when it is reached (CSR or dense).
    """
    chunk_rows = CHUNK_ROWS if chunk_rows is None else chunk_rows
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be positive, got {chunk_rows}.")
    n_rows = int(matrix.shape[0])
    if not is_backed(matrix):
        yield 0, n_rows, matrix
        return
    for start in range(0, n_rows, chunk_rows):
        stop = min(start + chunk_rows, n_rows)
        block = matrix[start:stop]
        yield start, stop, (block.tocsr() if sp.issparse(block) else np.asarray(block))


def matching_index_dtypes(matrix: Any) -> Any:
    """``matrix``, with the row pointers of an in-memory CSR matrix narrowed to the dtype of its column indices.

    Files written by appending chunks of rows have row pointers wider than their column indices; SciPy casts the whole index array to the wider dtype on every row selection, which costs seconds per minibatch for
    a million cells. The data and the indices are shared, not copied. Matrices whose row pointers do not fit the
    indices' dtype come back as they are.
    """
    if not sp.issparse(matrix) or matrix.format != "csr" or matrix.indptr.dtype == matrix.indices.dtype:
        return matrix
    if matrix.indptr[-1] > np.iinfo(matrix.indices.dtype).max:
        return matrix
    indptr = matrix.indptr.astype(matrix.indices.dtype)
    return type(matrix)((matrix.data, matrix.indices, indptr), shape=matrix.shape, copy=False)


def read_rows(matrix: Any, rows: np.ndarray) -> np.ndarray:
    """Dense ``float32`` rows ``rows`` (sorted, unique) of an in-memory or backed matrix; only those rows are read.

    A backed CSR matrix is indexed by a boolean mask, with which anndata reads runs of consecutive rows in one read
    each (when the runs are long enough) instead of one read per row.
    """
    if is_backed(matrix) and getattr(matrix, "format", None) == "csr":
        mask = np.zeros(int(matrix.shape[0]), dtype=bool)
        mask[rows] = True
        block = matrix[mask]
    else:
        block = matrix[rows]
    block = block.toarray() if sp.issparse(block) else block
    return np.asarray(block, dtype=np.float32)


def row_totals(matrix: Any, chunk_rows: int | None = None) -> np.ndarray:
    """Total counts per cell (``float32``), read in blocks of rows for a backed matrix."""
    totals = np.empty(int(matrix.shape[0]), dtype=np.float32)
    for start, stop, block in iter_row_blocks(matrix, chunk_rows):
        totals[start:stop] = np.asarray(block.sum(axis=1)).ravel().astype(np.float32)
    return totals


class CountStatistics(NamedTuple):
    """Whole-matrix sums that initialise the model (all ``float64``)."""

    gene_totals: np.ndarray
    """Counts per gene over all cells, shape ``(n_genes,)``."""
    target_gene_sums: np.ndarray
    """Counts per gene over the cells carrying each target, shape ``(n_targets, n_genes)``."""
    control_gene_sums: np.ndarray
    """Counts per gene over the control cells, shape ``(n_genes,)``."""


def count_statistics(
    matrix: Any, label_codes: np.ndarray, label_design: np.ndarray, chunk_rows: int | None = None
) -> CountStatistics:
    """Per-gene, per-target and control sums of the counts in one pass over blocks of rows.

    Parameters
    ----------
    matrix
        Cells x genes counts, in memory or backed.
    label_codes
        Perturbation label code per cell, shape ``(n_cells,)``.
    label_design
        Multi-hot targets of each label code, shape ``(n_labels, n_targets)``; a control label has no target.
    chunk_rows
        Rows per block of a backed matrix (default :data:`CHUNK_ROWS`).
    """
    n_genes = int(matrix.shape[1])
    design = sp.csr_matrix(label_design)
    is_control = (label_design.sum(1) == 0).astype(np.float64)
    gene_totals = np.zeros(n_genes)
    target_gene_sums = np.zeros((label_design.shape[1], n_genes))
    control_gene_sums = np.zeros(n_genes)
    for start, stop, block in iter_row_blocks(matrix, chunk_rows):
        codes = label_codes[start:stop]
        block_csr = block if sp.issparse(block) else sp.csr_matrix(block)
        gene_totals += np.asarray(block.sum(axis=0), dtype=np.float64).ravel()
        target_gene_sums += (design[codes].T @ block_csr).toarray().astype(np.float64)
        control_gene_sums += np.asarray(block_csr.T @ is_control[codes], dtype=np.float64).ravel()
    return CountStatistics(gene_totals, target_gene_sums, control_gene_sums)
