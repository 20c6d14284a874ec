"""Span minibatches of a shuffled store: each epoch visits every cell once, epochs differ, the reads are exact."""

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import torch

import pertpyro
from pertpyro.data import shuffle_h5ad
from pertpyro.data._loader import CellData, SparseRows, make_loader, program_args
from pertpyro.data._registry import get_registry
from pertpyro.data._spans import SpanBatchSampler, SpanData, make_span_loader, span_holdout
from pertpyro.model._training import _RowSubset


def _cells(spans: np.ndarray) -> np.ndarray:
    return np.concatenate([np.arange(a, b) for a, b in spans])


def test_every_epoch_visits_each_cell_once_and_epochs_differ():
    sampler = SpanBatchSampler(1003, 100, 16, seed=7)
    epochs = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) == 11
        sizes = [len(_cells(b)) for b in batches]
        assert sizes == [100] * 10 + [3]
        assert all(np.all(b[:, 1] - b[:, 0] <= 16) for b in batches)  # spans of at most span_size cells
        visited = np.concatenate([_cells(b) for b in batches])
        np.testing.assert_array_equal(np.sort(visited), np.arange(1003))  # each cell exactly once
        epochs.append({frozenset(_cells(b)) for b in batches})
    assert not epochs[0] & epochs[1]
    assert not epochs[1] & epochs[2]
    sampler.set_epoch(1)
    again = {frozenset(_cells(b)) for b in sampler}
    assert again == epochs[1]  # an epoch's minibatches follow (seed, epoch)
    ordered = list(SpanBatchSampler(250, 100, 16, shuffle=False))
    assert [b.tolist() for b in ordered] == [[[0, 100]], [[100, 200]], [[200, 250]]]


def test_bad_sampler_arguments():
    for kwargs, message in [
        ({"n_cells": 0, "batch_size": 4, "span_size": 2}, "n_cells"),
        ({"n_cells": 10, "batch_size": 0, "span_size": 2}, "batch_size"),
        ({"n_cells": 10, "batch_size": 4, "span_size": 0}, "span_size"),
    ]:
        with pytest.raises(ValueError, match=message):
            SpanBatchSampler(**kwargs)
    with pytest.raises(ValueError, match="validation_fraction"):
        span_holdout(100, 1.5, 0)


def test_holdout_is_a_window():
    train, val = span_holdout(1000, 0.1, seed=3)
    assert len(val) == 100
    assert np.all(np.diff(val) == 1)
    np.testing.assert_array_equal(np.sort(np.r_[train, val]), np.arange(1000))
    assert span_holdout(1000, 0.1, seed=4)[1][0] != val[0]


@pytest.fixture(scope="module")
def shuffled(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("spans")
    adata = pertpyro.datasets.simulate(n_cells=300, n_genes=25, n_targets=3, seed=4)
    adata.X = sp.csr_matrix(adata.X)
    del adata.uns["truth"]
    adata.write_h5ad(tmp_path / "screen.h5ad")
    shuffle_h5ad(tmp_path / "screen.h5ad", tmp_path / "shuffled.h5ad", seed=0)
    backed = ad.read_h5ad(tmp_path / "shuffled.h5ad", backed="r")
    pertpyro.setup_anndata(backed, batch_key="batch")
    memory = backed.to_memory()
    return CellData(backed, get_registry(backed)), CellData(memory, get_registry(backed))


@pytest.mark.parametrize("sparse", [False, True])
def test_span_reads_match_the_rows(shuffled, sparse):
    backed, memory = shuffled
    rows = np.setdiff1d(np.arange(300), np.arange(40, 57))  # a gap: spans across it are split
    data = SpanData(backed, rows, sparse=sparse)
    np.testing.assert_array_equal(data.store_spans(np.array([[35, 45]])), [[35, 40], [57, 62]])
    batch = data[np.array([[35, 45], [100, 104]])]
    positions = np.r_[np.arange(35, 45), np.arange(100, 104)]
    expected = memory[rows[positions]]  # CellData sorts; these positions are increasing already
    counts = batch["counts"]
    assert isinstance(counts, SparseRows) == sparse
    np.testing.assert_array_equal(program_args(batch, 300).counts.numpy(), expected["counts"].numpy())
    np.testing.assert_array_equal(batch["idx"].numpy(), positions)
    for key in ("perturbation", "batch_index", "library"):
        torch.testing.assert_close(batch[key], expected[key])


def test_loader_with_a_worker_reads_each_cell_once(shuffled):
    backed, memory = shuffled
    loader = make_span_loader(SpanData(backed), batch_size=64, span_size=8, shuffle=True, seed=1, num_workers=1)
    seen, total = [], 0.0
    for batch in loader:
        seen.append(batch["idx"].numpy())
        total += float(batch["counts"].sum())
    np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.arange(300))
    assert total == pytest.approx(float(memory.library.sum()))


def test_cells_one_by_one_give_the_in_memory_minibatches(shuffled):
    """span_size=1: make_loader's seeded minibatches, read as runs of rows, whether by a worker or not."""
    backed, memory = shuffled
    rows = np.random.default_rng(2).permutation(300)[:250]  # a random hold-out's training rows, unsorted
    reference = list(make_loader(_RowSubset(memory, rows), batch_size=64, shuffle=True, seed=5))
    for workers in (0, 1):
        loader = make_span_loader(
            SpanData(backed, rows), batch_size=64, span_size=1, shuffle=True, seed=5, num_workers=workers
        )
        batches = list(loader)
        assert len(batches) == len(reference)
        for got, want in zip(batches, reference, strict=True):
            for key in ("counts", "perturbation", "library", "idx"):
                torch.testing.assert_close(program_args(got, 250).counts if key == "counts" else got[key], want[key])
