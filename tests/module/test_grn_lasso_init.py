"""The Lasso start of the ``grn`` block's edges (``grn_init_lasso``, :func:`pertpyro.module._grn.lasso_edge_init`)."""

import numpy as np
import pytest
import torch

import pertpyro
from pertpyro.module._grn import LASSO_EDGE_INCLUSION, lasso_edge_init

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _hidden_regulator_screen(noise: float, seed: int = 0):
    """Six targets (genes 0-5) among 20 genes; target 5 is never perturbed but every other knockout moves its gene.

    Its children (genes 10-13) move in each knockout in proportion to its shift; each perturbed target also has one
    child of its own (genes 14-18).
    """
    rng = np.random.default_rng(seed)
    T, G = 6, 20
    regulator_gene = np.arange(T)
    truth = np.zeros((T, G))
    truth[5, 10:14] = [1.2, -0.8, 0.9, -1.1]
    truth[np.arange(5), 14 + np.arange(5)] = 1.0
    truth[np.arange(5), 5] = [0.9, -1.0, 1.1, -0.7, 1.3]  # the knockouts move the hidden regulator
    effects = np.zeros((T, G))
    for k in range(5):
        activity = np.zeros(T)
        activity[k] = -1.0
        activity[5] = -truth[k, 5]  # the hidden regulator's change, as its gene shows it
        effects[k] = activity @ truth
        effects[k, k] = -2.0  # the knocked-out target's own mRNA
    effects[:5] += noise * rng.standard_normal((5, G))
    return effects, np.array([True] * 5 + [False]), regulator_gene, truth


def test_hidden_regulator_edges_are_found_instead_of_direct_edges():
    effects, has_cells, regulator_gene, truth = _hidden_regulator_screen(noise=0.02)
    weights = lasso_edge_init(effects, has_cells, regulator_gene, alpha=0.01)
    assert weights.shape == (6, 20)
    hidden = weights[5, 10:14]
    np.testing.assert_allclose(hidden, truth[5, 10:14], atol=0.15)  # one edge out of the hidden regulator ...
    assert np.abs(weights[:5, 10:14]).max() < 0.1  # ... rather than five direct edges per child
    # each knockout's own child, and its edge to the hidden regulator's gene (sign: activity -1 moves it by -w)
    np.testing.assert_allclose(weights[np.arange(5), 14 + np.arange(5)], 1.0, atol=0.15)
    np.testing.assert_allclose(weights[np.arange(5), 5], truth[np.arange(5), 5], atol=0.15)
    assert np.all(np.diag(weights[:, :6]) == 0)  # no self edges
    assert np.abs(weights[:, 6:10]).max() < 0.05  # genes no knockout moves get no edges


def test_no_regulator_with_cells_gives_zero_edges():
    effects, _, regulator_gene, _ = _hidden_regulator_screen(noise=0.0)
    weights = lasso_edge_init(effects, np.zeros(6, dtype=bool), regulator_gene, alpha=0.01)
    assert not weights.any()


def test_model_option_starts_the_guide_at_the_lasso_edges(tmp_path):
    adata = pertpyro.datasets.simulate(
        n_cells=600, n_genes=30, n_targets=5, n_combinations=0, grn=True, grn_density=0.15, n_truth_cells=0, seed=1
    )
    pertpyro.setup_anndata(adata, batch_key="batch")
    plain = pertpyro.PerturbationModel(adata, grn=True, latent_dim=2, n_hidden=16)
    model = pertpyro.PerturbationModel(adata, grn=True, grn_init_lasso=0.02, latent_dim=2, n_hidden=16)
    start = model.program.grn.weight_init
    assert start.shape == (5, 30)
    assert (start != 0).any()
    torch.testing.assert_close(model.guide.grn.weight_loc.detach(), start)
    selected = torch.sigmoid(model.guide.grn.logit.detach())[start != 0]
    torch.testing.assert_close(selected, torch.full_like(selected, LASSO_EDGE_INCLUSION[0]))
    assert not plain.guide.grn.weight_loc.detach().any()  # without the option every edge starts at 0
    assert "grn_init_lasso" not in plain.init_kwargs
    model.train(max_epochs=2, batch_size=128, progress_bar=False)
    model.save(tmp_path / "m")
    loaded = pertpyro.PerturbationModel.load(tmp_path / "m", adata)
    assert loaded.init_kwargs["grn_init_lasso"] == 0.02
    torch.testing.assert_close(loaded.guide.grn.weight_loc, model.guide.grn.weight_loc)
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="grn_init_lasso"):
            pertpyro.PerturbationModel(adata, grn=True, grn_init_lasso=bad, latent_dim=2)
