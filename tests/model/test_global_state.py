"""Seeded queries, model construction and training leave the global random states as they found them."""

# ruff: noqa: NPY002 (the legacy global NumPy state is what these tests watch)

import random

import numpy as np
import pytest
import torch

import pertpyro
from pertpyro._settings import seeded


def _states():
    return random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state().clone()


def _assert_same(before, after):
    assert before[0] == after[0], "Python's random state changed"
    np.testing.assert_array_equal(before[1], after[1], err_msg="NumPy's global state changed")
    assert torch.equal(before[2], after[2]), "torch's global state changed"


@pytest.fixture(scope="module")
def trained():
    import anndata as ad
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    labels = np.array(["control"] * 60 + ["A"] * 40 + ["B"] * 40 + ["A+B"] * 20)
    counts = rng.poisson(2.0, size=(len(labels), 20)).astype(np.float32) + 1
    adata = ad.AnnData(sp.csr_matrix(counts))
    adata.obs_names = [f"c{i}" for i in range(len(labels))]
    adata.var_names = [f"g{j}" for j in range(20)]
    adata.obs["perturbation"] = labels
    pertpyro.setup_anndata(adata)
    model = pertpyro.PerturbationModel(adata, latent_dim=2, n_hidden=8)
    model.train(max_epochs=1, batch_size=80, progress_bar=False)
    return model, adata


QUERIES = {
    "ate": lambda m, a: m.ate(["A"], n_samples=2, seed=5),
    "ate_draws": lambda m, a: m.ate_draws(["A"], n_samples=2, seed=5),
    "ate_probability": lambda m, a: m.ate_probability(["A"], n_samples=2, seed=5),
    "predict_shift": lambda m, a: m.predict_shift(["A"], n_samples=2, seed=5),
    "counterfactual": lambda m, a: m.counterfactual(a[:10], do={"perturbation": "control"}, n_samples=2, seed=5),
    "iwelbo": lambda m, a: m.iwelbo(a[:20], n_samples=2, seed=5),
    "to_inference_data": lambda m, a: m.to_inference_data(n_samples=4, seed=5),
}


@pytest.mark.parametrize("name", sorted(QUERIES))
def test_seeded_query_leaves_global_states(trained, name):
    model, adata = trained
    random.random()
    np.random.random()
    torch.rand(1)
    before = _states()
    first = QUERIES[name](model, adata)
    _assert_same(before, _states())
    second = QUERIES[name](model, adata)  # and the seed still gives the same answer
    if isinstance(first, float):
        assert first == second
    elif isinstance(first, np.ndarray):
        np.testing.assert_array_equal(first, second)


def test_construction_and_training_leave_global_states(trained):
    _, adata = trained
    before = _states()
    model = pertpyro.PerturbationModel(adata, latent_dim=2, n_hidden=8, seed=3)
    model.train(max_epochs=1, batch_size=80, progress_bar=False, seed=4)
    _assert_same(before, _states())


def test_seeded_restores_on_error():
    before = _states()

    def fails():
        with seeded(1):
            np.random.random()
            raise RuntimeError

    with pytest.raises(RuntimeError):
        fails()
    _assert_same(before, _states())
    with seeded(2):
        a = (random.random(), np.random.random(), float(torch.rand(1)))
    with seeded(2):
        assert a == (random.random(), np.random.random(), float(torch.rand(1)))
