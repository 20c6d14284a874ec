"""Training from a shuffled on-disk store (span minibatches read by a worker) recovers what the in-memory fit does."""

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import torch

import pertpyro
from pertpyro.data import shuffle_h5ad
from pertpyro.data._simulate import truth_shift_frame
from pertpyro.data._spans import SPAN_SIZE


@pytest.fixture(scope="module")
def screen(tmp_path_factory):
    folder = tmp_path_factory.mktemp("train_spans")
    adata = pertpyro.datasets.simulate(n_cells=1000, n_genes=40, n_targets=4, seed=5, n_truth_cells=2000)
    truth = truth_shift_frame(adata)
    adata.X = sp.csr_matrix(adata.X)
    del adata.uns["truth"]
    adata.write_h5ad(folder / "screen.h5ad")
    shuffle_h5ad(folder / "screen.h5ad", folder / "shuffled.h5ad", seed=0)
    return adata, folder, truth


def _fit(adata):
    pertpyro.setup_anndata(adata, batch_key="batch")
    model = pertpyro.PerturbationModel(adata, latent_dim=3, n_hidden=16, seed=0)
    model.train(max_epochs=12, batch_size=100, lr=2e-2, progress_bar=False, seed=0, early_stopping=False)
    return model


def test_fit_from_shuffled_store_agrees_with_in_memory_fit(screen):
    adata, folder, truth = screen
    torch.set_num_threads(1)  # the loader's worker process takes the other core
    backed = ad.read_h5ad(folder / "shuffled.h5ad", backed="r")
    disk = _fit(backed)
    assert disk._span_settings(None, None, 1) == (SPAN_SIZE, 1)  # the defaults: spans read by a worker
    memory = _fit(adata)
    labels = list(truth.index)
    shifts = [
        m.predict_shift(labels, n_samples=20).loc[labels, truth.columns].to_numpy().ravel() for m in (disk, memory)
    ]
    r_truth = [np.corrcoef(s, truth.to_numpy().ravel())[0, 1] for s in shifts]
    assert min(r_truth) > 0.55, r_truth  # both recover the true effects (12 epochs: 0.68 and 0.71)
    assert abs(r_truth[0] - r_truth[1]) < 0.1, r_truth
    assert np.corrcoef(*shifts)[0, 1] > 0.85
    final = [m.history_["train_loss"].iloc[-1] for m in (disk, memory)]
    assert final[0] == pytest.approx(final[1], rel=0.02)


def test_span_options_are_checked(screen):
    adata, folder, _ = screen
    pertpyro.setup_anndata(adata, batch_key="batch")
    model = pertpyro.PerturbationModel(adata, latent_dim=2, n_hidden=8, seed=0)
    with pytest.raises(ValueError, match="shuffle_h5ad"):
        model.train(max_epochs=1, span_size=8)  # not a shuffled file: runs of cells are not random sets
    with pytest.raises(ValueError, match="num_workers must be non-negative"):
        model.train(max_epochs=1, num_workers=-1)
    backed = ad.read_h5ad(folder / "shuffled.h5ad", backed="r")
    pertpyro.setup_anndata(backed, batch_key="batch")
    model = pertpyro.PerturbationModel(backed, latent_dim=2, n_hidden=8, seed=0)
    assert model._span_settings(None, None, 1) == (SPAN_SIZE, 1)
    assert model._span_settings(1, None, 1) == (1, 0)  # cells one by one, read in the training process
    with pytest.raises(ValueError, match="block_size > 1 goes with"):
        model.train(max_epochs=1, span_size=8, block_size=4)
    with pytest.raises(ValueError, match="span_size must be positive"):
        model.train(max_epochs=1, span_size=0)
