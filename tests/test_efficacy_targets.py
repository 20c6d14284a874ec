"""``efficacy`` as a list of targets: only those have escapers; the others respond in every cell."""

import pytest

import pertpyro


def test_efficacy_for_listed_targets_only(tiny_adata, tmp_path):
    model = pertpyro.PerturbationModel(tiny_adata, latent_dim=2, n_hidden=16, efficacy=["A"], seed=0)
    model.train(max_epochs=3, batch_size=128, progress_bar=False)
    rho = model.efficacy_probability()
    assert rho["B"] == 1.0
    assert rho["C"] == 1.0
    assert 0.0 < rho["A"] < 1.0
    # a B cell responds for sure, so B's intent-to-treat shift is its responders' shift (up to Monte Carlo);
    # only a fraction of A cells respond, so A's is clearly smaller on its own gene g0
    kw = {"n_samples": 20, "max_cells": 80, "seed": 1}
    itt = model.ate(["A", "B"], **kw).set_index(["perturbation", "gene"])["mean"]
    resp = model.ate(["A", "B"], responders=True, **kw).set_index(["perturbation", "gene"])["mean"]
    assert abs(itt.loc[("B", "g1")] - resp.loc[("B", "g1")]) < 0.1 * abs(resp.loc[("B", "g1")])
    assert abs(itt.loc[("A", "g0")]) < 0.9 * abs(resp.loc[("A", "g0")])
    model.save(tmp_path / "m")
    loaded = pertpyro.PerturbationModel.load(tmp_path / "m", tiny_adata)
    assert loaded.efficacy_probability().equals(rho)


def test_efficacy_unknown_target(tiny_adata):
    with pytest.raises(ValueError, match="absent from the data"):
        pertpyro.PerturbationModel(tiny_adata, efficacy=["A", "Z"])
