"""A diverging fit stops with pertpyro's own error and keeps finite parameters."""

import pytest
import torch

import pertpyro
from pertpyro.inference import NaNGuard, TrainingDivergedError


@pytest.fixture
def small_screen():
    adata = pertpyro.datasets.simulate(n_cells=300, n_genes=20, n_targets=3, seed=0)
    pertpyro.setup_anndata(adata, batch_key="batch")
    return adata


def _finite(model):
    params = list(model.program.parameters()) + list(model.guide.parameters())
    return all(bool(torch.isfinite(p).all()) for p in params)


def test_diverging_fit_raises_and_keeps_finite_parameters(small_screen):
    model = pertpyro.PerturbationModel(small_screen, latent_dim=2, n_hidden=8)
    with pytest.raises(TrainingDivergedError, match=r"diverged at step \d+.*lower the learning rate \(lr=5") as info:
        model.train(lr=5, max_epochs=5, batch_size=64, progress_bar=False)
    assert isinstance(info.value, RuntimeError)
    assert info.value.step > 0
    assert _finite(model)


def test_guard_checked_every_n_steps_restores_snapshot(small_screen, monkeypatch):
    """With a sparse host check (as on a GPU) the error still names a step and restores finite values."""
    monkeypatch.setattr(NaNGuard, "default_every", 1000)
    model = pertpyro.PerturbationModel(small_screen, latent_dim=2, n_hidden=8)
    with pytest.raises(TrainingDivergedError, match=r"diverged at step \d+"):
        model.train(lr=5, max_epochs=5, batch_size=64, progress_bar=False)
    assert _finite(model)


def test_healthy_fit_unaffected(small_screen):
    model = pertpyro.PerturbationModel(small_screen, latent_dim=2, n_hidden=8)
    history = model.train(lr=5e-3, max_epochs=2, batch_size=64, progress_bar=False)
    assert len(history) == 2
    assert _finite(model)
