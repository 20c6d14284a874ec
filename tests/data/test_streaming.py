"""Streaming from a backed (on-disk) AnnData: same registry and fit as in memory, file untouched, reads bounded."""

import hashlib

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import torch

import pertpyro
from pertpyro.data import _stream
from pertpyro.data._blocks import BlockBatchSampler, holdout_rows
from pertpyro.data._loader import CellData, make_loader
from pertpyro.data._registry import get_registry
from pertpyro.data._stream import count_statistics, is_backed, iter_row_blocks, row_totals


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class _Recording:
    """A backed matrix that records every read (row slices and index arrays)."""

    def __init__(self, matrix) -> None:
        self.matrix, self.reads = matrix, []

    @property
    def shape(self):
        return self.matrix.shape

    @property
    def format(self):
        return self.matrix.format

    def __getitem__(self, key):
        if isinstance(key, slice):
            rows = np.arange(*key.indices(self.shape[0]))
        else:
            rows = np.flatnonzero(key) if np.asarray(key).dtype == bool else np.asarray(key)
        self.reads.append(rows)
        return self.matrix[key]


@pytest.fixture
def screen_file(tmp_path):
    adata = pertpyro.datasets.simulate(n_cells=600, n_genes=40, n_targets=4, seed=3)
    path = tmp_path / "screen.h5ad"
    adata.write_h5ad(path)
    return adata, path


def test_backed_training_matches_in_memory(screen_file, monkeypatch):
    adata, path = screen_file
    before = _digest(path)
    backed = ad.read_h5ad(path, backed="r")
    assert is_backed(backed.X)
    pertpyro.setup_anndata(adata, batch_key="batch")
    pertpyro.setup_anndata(backed, batch_key="batch")
    assert get_registry(backed) == get_registry(adata)
    monkeypatch.setattr(_stream, "CHUNK_ROWS", 128)  # several blocks per chunked pass
    runs = []
    for data in (adata, backed):
        model = pertpyro.PerturbationModel(data, latent_dim=3, n_hidden=16, seed=0)
        history = model.train(max_epochs=2, batch_size=100, progress_bar=False, seed=0)
        runs.append((history, model))
    (h_mem, m_mem), (h_disk, m_disk) = runs
    assert is_backed(m_disk.cell_data.counts)  # the counts stayed on disk
    np.testing.assert_array_equal(m_disk.cell_data.library, m_mem.cell_data.library)
    # Chunked sums differ from whole-matrix sums only by float rounding, so the fits agree closely.
    np.testing.assert_allclose(h_disk[["train_loss", "val_loss"]], h_mem[["train_loss", "val_loss"]], rtol=1e-4)
    for (name, p_mem), p_disk in zip(m_mem.program.named_parameters(), m_disk.program.parameters(), strict=True):
        torch.testing.assert_close(p_disk, p_mem, rtol=1e-3, atol=1e-4, msg=name)
    # The training went somewhere: the loss dropped, and the minibatches hold the file's counts.
    assert h_disk["train_loss"].iloc[-1] < h_disk["train_loss"].iloc[0]
    batch = m_disk.cell_data[np.array([5, 3, 500])]
    np.testing.assert_array_equal(batch["counts"].numpy(), adata.X[[3, 5, 500]].toarray())
    assert _digest(path) == before  # reading, registering and training never wrote to the file


def test_chunked_statistics_equal_whole_matrix(tmp_path):
    rng = np.random.default_rng(0)
    n, g, t = 257, 23, 5
    counts = sp.random(n, g, density=0.3, format="csr", random_state=1, dtype=np.float32)
    counts.data = np.ceil(counts.data * 20)
    design = np.vstack([np.zeros(t), np.eye(t), np.eye(t)[[0]] + np.eye(t)[[1]]]).astype(np.float32)
    codes = rng.integers(0, design.shape[0], size=n)
    path = tmp_path / "x.h5ad"
    ad.AnnData(counts).write_h5ad(path)
    backed = _Recording(ad.read_h5ad(path, backed="r").X)

    stats = count_statistics(backed, codes, design, chunk_rows=50)
    dense = counts.toarray().astype(np.float64)
    cell_design = design[codes].astype(np.float64)
    np.testing.assert_allclose(stats.gene_totals, dense.sum(0), rtol=1e-12)
    np.testing.assert_allclose(stats.target_gene_sums, cell_design.T @ dense, rtol=1e-12)
    np.testing.assert_allclose(stats.control_gene_sums, dense[cell_design.sum(1) == 0].sum(0), rtol=1e-12)
    # Read in blocks of at most 50 rows, each row once.
    assert max(len(r) for r in backed.reads) == 50
    np.testing.assert_array_equal(np.concatenate(backed.reads), np.arange(n))
    np.testing.assert_array_equal(row_totals(backed, chunk_rows=64), dense.sum(1).astype(np.float32))
    # An in-memory matrix is one block: no copy, and exactly the whole-matrix sums.
    (block,) = [b for _, _, b in iter_row_blocks(counts, chunk_rows=10)]
    assert block is counts
    exact = count_statistics(counts, codes, design)
    np.testing.assert_array_equal(exact.gene_totals, np.asarray(counts.sum(axis=0), dtype=np.float64).ravel())


def test_loader_reads_only_minibatch_rows(screen_file, monkeypatch):
    adata, path = screen_file
    backed = ad.read_h5ad(path, backed="r")
    pertpyro.setup_anndata(backed)
    monkeypatch.setattr(_stream, "CHUNK_ROWS", 200)
    data = CellData(backed, get_registry(backed))
    recording = _Recording(data.counts)
    data.counts = recording
    data.statistics()
    assert [len(r) for r in recording.reads] == [200, 200, 200]
    recording.reads.clear()
    seen = []
    for batch in make_loader(data, batch_size=64, shuffle=True, seed=0):
        seen.append(batch["idx"].numpy())
        np.testing.assert_array_equal(batch["counts"].numpy(), adata.X[batch["idx"].numpy()].toarray())
    # One read per minibatch, of exactly its (sorted) rows; together one pass over the cells.
    assert len(recording.reads) == len(seen) == 10
    for read, idx in zip(recording.reads, seen, strict=True):
        np.testing.assert_array_equal(read, idx)
        assert np.all(np.diff(read) > 0)
    np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.arange(adata.n_obs))


def test_backed_csc_is_rejected(tmp_path, tiny_adata):
    csc = tiny_adata.copy()
    csc.X = sp.csc_matrix(csc.X)
    csc.write_h5ad(tmp_path / "csc.h5ad")
    backed = ad.read_h5ad(tmp_path / "csc.h5ad", backed="r")
    pertpyro.setup_anndata(backed, batch_key="batch")
    with pytest.raises(ValueError, match="backed CSC"):
        pertpyro.PerturbationModel(backed)


def test_block_batches_cover_every_cell_in_runs():
    sampler = BlockBatchSampler(1003, batch_size=100, block_size=25, seed=4)
    epochs = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) == 11
        cells = np.concatenate(batches)
        np.testing.assert_array_equal(np.sort(cells), np.arange(1003))  # each cell once per epoch
        # Blocks of 25 consecutive cells, each one unbroken run in the epoch's order; a batch spans at most 5 blocks.
        block = cells // 25
        same = block[1:] == block[:-1]
        assert np.all(np.diff(cells)[same] == 1)
        assert np.count_nonzero(~same) + 1 == 41
        assert max(len(np.unique(np.asarray(b) // 25)) for b in batches) <= 5
        epochs.append(cells)
    assert not np.array_equal(epochs[0], epochs[1])
    sampler.set_epoch(0)
    np.testing.assert_array_equal(np.concatenate(list(sampler)), epochs[0])  # reproducible


def test_holdout_rows():
    train, val = holdout_rows(1000, 0.1, seed=3)
    order = np.random.default_rng(3).permutation(1000)  # the model's hold-out before block reads existed
    np.testing.assert_array_equal(train, order[100:])
    np.testing.assert_array_equal(val, order[:100])
    train, val = holdout_rows(1000, 0.1, seed=3, block_size=50)
    assert len(val) == 100
    assert np.all(np.diff(train) > 0)
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(1000))
    assert set(np.unique(val // 50)).isdisjoint(np.unique(train // 50))  # whole blocks held out
    with pytest.raises(ValueError, match="validation_fraction"):
        holdout_rows(10, 1.5, seed=0)


def test_block_training_from_disk(screen_file):
    adata, path = screen_file
    backed = ad.read_h5ad(path, backed="r")
    pertpyro.setup_anndata(backed, batch_key="batch")
    model = pertpyro.PerturbationModel(backed, latent_dim=3, n_hidden=16)
    history = model.train(max_epochs=3, batch_size=100, block_size=20, progress_bar=False, seed=0)
    assert np.isfinite(history[["train_loss", "val_loss"]].to_numpy()).all()
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    rows = np.array([0, 1, 2, 3, 40, 41, 42, 300])  # runs and a single row: read through the mask
    np.testing.assert_array_equal(model.cell_data[rows]["counts"].numpy(), adata.X[rows].toarray())


def test_in_memory_row_pointers_match_the_indices():
    """Wider row pointers than indices (files written by appending) make SciPy cast the whole matrix per minibatch."""
    counts = sp.random(50, 8, density=0.3, format="csr", random_state=0, dtype=np.float32)
    dense = np.ceil(counts.toarray() * 5)
    dense[:, 0] += 1  # no empty cell
    counts = sp.csr_matrix(dense)
    counts.indptr = counts.indptr.astype(np.int64)  # int32 indices, int64 row pointers
    adata = ad.AnnData(counts)
    adata.obs["perturbation"] = ["control"] * 25 + ["A"] * 25
    pertpyro.setup_anndata(adata)
    data = CellData(adata, get_registry(adata))
    assert data.counts.indptr.dtype == data.counts.indices.dtype
    assert np.shares_memory(data.counts.data, adata.X.data)  # no copy of the counts
    np.testing.assert_array_equal(data[np.arange(50)]["counts"].numpy(), adata.X.toarray())
