"""Shared fixtures: every test starts from a seeded RNG, Pyro validation on, and an empty param store."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import pyro
import pytest
import torch

from pertpyro._settings import set_seed


@pytest.fixture(autouse=True)
def _seeded_pyro():
    pyro.clear_param_store()
    pyro.enable_validation(True)
    set_seed(0)
    torch.set_num_threads(2)
    yield
    pyro.clear_param_store()


@pytest.fixture
def tiny_adata():
    """A small registered screen: 240 cells x 30 genes, targets A, B, C, the combination A+B, two batches."""
    import anndata as ad
    import numpy as np
    import scipy.sparse as sp

    from pertpyro import setup_anndata

    rng = np.random.default_rng(0)
    labels = np.array(["control"] * 80 + ["A"] * 50 + ["B"] * 50 + ["C"] * 40 + ["A+B"] * 20)
    n, g = len(labels), 30
    base = rng.gamma(2.0, 1.0, size=g)
    mean = np.tile(base, (n, 1)) * rng.lognormal(0, 0.2, size=(n, 1))
    mean[np.isin(labels, ["A", "A+B"]), 0] *= 0.2
    mean[np.isin(labels, ["B", "A+B"]), 1] *= 4.0
    counts = rng.poisson(mean).astype(np.float32)
    counts[:, 5] += 1  # no empty cells
    adata = ad.AnnData(sp.csr_matrix(counts))
    adata.obs_names = [f"cell{i}" for i in range(n)]
    adata.var_names = [f"g{j}" for j in range(g)]
    adata.obs["perturbation"] = labels
    adata.obs["batch"] = np.where(np.arange(n) % 2 == 0, "b1", "b2")
    setup_anndata(adata, batch_key="batch")
    return adata
