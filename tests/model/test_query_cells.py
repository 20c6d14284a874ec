"""Every AnnData a query receives is held to the data contract of setup_anndata: log-normalised cells are refused."""

import numpy as np
import pytest
import scipy.sparse as sp

import pertpyro


@pytest.fixture(scope="module")
def trained():
    adata = pertpyro.datasets.simulate(n_cells=400, n_genes=20, n_targets=2, n_combinations=0, seed=2)
    pertpyro.setup_anndata(adata)
    model = pertpyro.PerturbationModel(adata, latent_dim=2, n_hidden=8, seed=0)
    model.train(max_epochs=2, batch_size=128, progress_bar=False)
    lognorm = adata[:50].copy()
    lognorm.X = sp.csr_matrix(pertpyro.data.log_normalise(lognorm.X))
    return model, adata, lognorm


QUERIES = {
    "counterfactual": lambda m, a: m.counterfactual(a, do={"perturbation": "control"}, n_samples=1),
    "ate(cells=)": lambda m, a: m.ate("G0000", cells=a, n_samples=2),
    "get_latent_representation": lambda m, a: m.get_latent_representation(a),
    "iwelbo": lambda m, a: m.iwelbo(a, n_samples=1),
}


@pytest.mark.parametrize("query", list(QUERIES))
def test_queries_refuse_log_normalised_cells(trained, query):
    model, adata, lognorm = trained
    with pytest.raises(ValueError, match="integer|counts"):
        QUERIES[query](model, lognorm)
    QUERIES[query](model, adata[:50].copy())  # the same cells as raw counts pass


def test_validation_cells_are_checked_too(trained):
    model, adata, lognorm = trained
    fresh = pertpyro.PerturbationModel(adata, latent_dim=2, n_hidden=8, seed=0)
    with pytest.raises(ValueError, match="integer|counts"):
        fresh.train(max_epochs=1, validation_adata=lognorm, progress_bar=False)
    assert not fresh.is_trained


def test_queries_refuse_other_genes_and_empty_cells(trained):
    model, adata, _ = trained
    with pytest.raises(ValueError, match="genes"):
        model.get_latent_representation(adata[:10, ::-1].copy())
    with pytest.raises(ValueError, match="empty"):
        model.counterfactual(adata[:0].copy(), do={"perturbation": "control"})
    assert np.isfinite(model.get_latent_representation(adata[:10].copy())).all()
