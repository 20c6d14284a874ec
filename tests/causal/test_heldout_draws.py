"""The evaluation's shared simulation: one pass gives predict_shift's and ate_draws' draws; the coupled sampler
keeps every arm's count distribution."""

import numpy as np
import pytest
import torch

import pertpyro
from pertpyro.causal._expected import coupled_log_normalised
from pertpyro.data import log_normalise
from pertpyro.evaluation._draws import heldout_draws


@pytest.fixture(scope="module")
def trained():
    pertpyro.set_seed(0)
    adata = pertpyro.datasets.simulate(
        n_cells=800, n_genes=30, n_targets=3, n_combinations=1, n_batches=2, seed=3, n_truth_cells=0
    )
    pertpyro.setup_anndata(adata, batch_key="batch")
    model = pertpyro.PerturbationModel(adata, latent_dim=3, seed=0)
    model.train(max_epochs=8, batch_size=256, lr=1e-2, progress_bar=False)
    return model


def test_one_simulation_gives_both_draws(trained):
    model = trained
    labels = [*model.registry.targets, f"{model.registry.targets[0]}+{model.registry.targets[1]}"]
    matched, standard = heldout_draws(model, labels, n_samples=4, seed=3, n_counts=2)
    assert matched.shape == standard.shape == (4, len(labels), model.registry.n_genes)
    separate = model.ate_draws(labels, n_samples=4, seed=3)  # n_counts: the engine default
    np.testing.assert_allclose(heldout_draws(model, labels, n_samples=4, seed=3)[1], separate, atol=1e-5)
    predicted = model.predict_shift(labels, n_samples=4, seed=3, basal="control")
    np.testing.assert_allclose(heldout_draws(model, labels, n_samples=4, seed=3)[0].mean(0), predicted, atol=1e-5)
    # batches differ in composition between labels' training cells, so the two weightings do differ
    assert not torch.allclose(matched, standard)


def test_coupled_arms_keep_their_distribution():
    """Each arm's counts are negative binomial with its own mean: its expected log-normalised value matches an
    independent simulation, while control and arm are coupled cell by cell."""
    torch.manual_seed(0)
    cells, genes = 40000, 6
    control_mean = torch.tensor([2.0, 5.0, 20.0, 1.0, 8.0, 50.0]).expand(cells, genes)
    ratio = torch.tensor([[0.3, 1.0, 2.5, 1.0, 0.8, 1.0], [1.0, 4.0, 0.5, 1.0, 1.0, 1.0]])
    theta = torch.tensor(3.0)
    control, arms = coupled_log_normalised(control_mean, theta, ratio[:, None, :] * control_mean, n_counts=4)
    for a in range(2):
        mean = ratio[a] * control_mean
        rate = torch._standard_gamma(theta.expand(4, cells, genes).contiguous()) * mean / theta
        direct = log_normalise(torch.poisson(rate)).mean((0, 1))
        np.testing.assert_allclose(arms[a].mean(0), direct, atol=0.03)
    # coupling: per cell, the shift of gene 3 (unchanged; it moves only through the library total) is far less
    # noisy than between uncoupled cells (control values of other cells)
    coupled = (arms[0, :, 3] - control[:, 3]).std()
    uncoupled = (arms[0, :, 3] - control[torch.randperm(cells), 3]).std()
    assert coupled < 0.5 * uncoupled
