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


def test_efficacy_strong_keeps_escapers_for_targets_with_a_clear_shift(tiny_adata, tmp_path):
    import numpy as np
    import scipy.sparse as sp

    from pertpyro.data import strong_perturbations

    counts = tiny_adata.X.toarray()
    has_a = tiny_adata.obs["perturbation"].isin(["A", "A+B"]).to_numpy()
    counts[np.ix_(has_a, [2, 3, 4, 5, 6])] = np.floor(0.1 * counts[np.ix_(has_a, [2, 3, 4, 5, 6])])
    tiny_adata.X = sp.csr_matrix(counts)  # A now shifts six genes; B one gene (ratio 2-3); C none
    assert strong_perturbations(tiny_adata, threshold=3.0) == ["A", "A+B"]
    model = pertpyro.PerturbationModel(tiny_adata, latent_dim=2, n_hidden=16, efficacy="strong", seed=0)
    assert model.init_kwargs["efficacy"] == ["A"]  # single targets only; stored resolved
    assert model.program.efficacy_targets.tolist() == [True, False, False]
    model.save(tmp_path / "m")
    without_a = tiny_adata[tiny_adata.obs["perturbation"] != "A"].copy()
    loaded = pertpyro.PerturbationModel.load(tmp_path / "m", without_a)  # a reload does not re-rank on its data
    assert loaded.init_kwargs["efficacy"] == ["A"]
    with pytest.raises(ValueError, match="'strong' or a list"):
        pertpyro.PerturbationModel(tiny_adata, efficacy="always")
