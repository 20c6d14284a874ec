"""``efficacy="auto"``: the learned prior on response rates finds which targets have escapers."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import pertpyro
from pertpyro.module._program import PerturbationProgram


def test_learned_prior_leans_toward_full_response():
    program = PerturbationProgram(5, 2, 1, 2, efficacy_prior="learned")
    prior = program.response_rate_prior(2)
    assert prior.batch_shape == (2, 1)
    a = float(program.response_concentration().detach())
    half, near_one = prior.log_prob(torch.tensor([[0.5], [0.95]])).squeeze(-1).tolist()
    assert near_one - half == pytest.approx((a - 1) * np.log(0.95 / 0.5), rel=1e-4)
    assert near_one > half + 2.0
    with pytest.raises(ValueError, match="efficacy_prior"):
        PerturbationProgram(5, 2, 1, 2, efficacy_prior="beta")


def _escapers(tiny_adata):
    """A lowers g0 in all its cells; B raises g1 twelvefold in half of its cells (the others escaped); C does nothing."""
    counts = tiny_adata.X.toarray()
    labels = tiny_adata.obs["perturbation"].to_numpy()
    b_cells = np.flatnonzero(labels == "B")
    responders = np.random.default_rng(1).choice(b_cells, size=len(b_cells) // 2, replace=False)
    counts[b_cells, 1] = counts[labels == "C", 1][: len(b_cells)].mean()  # B's cells as control cells on g1
    counts[responders, 1] *= 12
    tiny_adata.X = sp.csr_matrix(np.round(counts))
    return tiny_adata


def test_learned_prior_pulls_a_target_without_escapers_toward_full_response(tiny_adata):
    adata = _escapers(tiny_adata)
    rates = {}
    for efficacy in ("auto", True):
        model = pertpyro.PerturbationModel(adata, latent_dim=2, n_hidden=16, efficacy=efficacy, seed=0)
        model.train(max_epochs=20, batch_size=80, lr=0.05, progress_bar=False, early_stopping=False, seed=0)
        rates[efficacy] = model.efficacy_probability()
    for rho in rates.values():
        assert 0.25 < rho["B"] < 0.75  # half of B's cells escaped
    # C has no effect: under the uniform prior its rate wanders to fit noise; the learned prior holds it higher
    assert rates["auto"]["C"] > rates[True]["C"] + 0.1
    assert rates["auto"]["A"] >= rates[True]["A"]
