"""Options of a block that is off are refused, not ignored; saved models keep loading."""

import json

import numpy as np
import pandas as pd
import pytest

import pertpyro
from pertpyro.module import _grn

NETWORK = pd.DataFrame({"source": ["A"], "target": ["g0"]})


@pytest.mark.parametrize(
    ("options", "switch"),
    [
        ({"grn_steps": 2}, "grn=True"),
        ({"grn_density": 0.1}, "grn=True"),
        ({"grn_prior": NETWORK}, "grn=True"),
        ({"grn_prior": "collectri"}, "grn=True"),
        ({"grn_regulators": ["g5"]}, "grn=True"),
        ({"grn_regulators": np.array(["g5", "g6"])}, "grn=True"),
        ({"grn_regulators": pd.Index(["g5", "g6"])}, "grn=True"),
        ({"grn_prior_inclusion": 0.9}, "grn=True"),
        ({"grn_weight_scale": 2.0}, "grn=True"),
        ({"grn_init_lasso": 0.02}, "grn=True"),
        ({"mask_prior": 0.2}, "sparse_effects=True"),
        ({"artifact_key": "doublet"}, "artifacts="),
        ({"artifact_evidence": ["n_genes"]}, "artifacts="),
    ],
)
def test_an_option_of_a_block_that_is_off_is_refused(tiny_adata, options, switch):
    name = next(iter(options))
    with pytest.raises(ValueError, match=rf"{name}.*{switch}"):
        pertpyro.PerturbationModel(tiny_adata, latent_dim=2, n_hidden=8, **options)


def test_defaults_given_explicitly_and_options_of_blocks_that_are_on_are_accepted(tiny_adata):
    pertpyro.PerturbationModel(
        tiny_adata,
        latent_dim=2,
        n_hidden=8,
        mask_prior=0.5,
        grn_steps=3,
        grn_prior=None,
        artifact_key="artifact",
        artifact_evidence="auto",
    )
    model = pertpyro.PerturbationModel(tiny_adata, latent_dim=2, n_hidden=8, sparse_effects=True, mask_prior=0.2)
    assert model.program.sparse_effects
    model = pertpyro.PerturbationModel(tiny_adata, latent_dim=2, n_hidden=8, grn=True, grn_steps=2)
    assert model.program.grn.n_steps == 2


def test_a_saved_model_with_an_ignored_option_still_loads(tiny_adata, tmp_path):
    """Files written when such options were ignored keep loading, with the option at its default."""
    model = pertpyro.PerturbationModel(tiny_adata, latent_dim=2, n_hidden=8)
    model.save(tmp_path / "m")
    settings_file = tmp_path / "m" / "settings.json"
    settings = json.loads(settings_file.read_text())
    settings["init_kwargs"]["mask_prior"] = 0.2  # sparse_effects is off: the value never mattered
    settings_file.write_text(json.dumps(settings))
    loaded = pertpyro.PerturbationModel.load(tmp_path / "m", tiny_adata)
    assert loaded.init_kwargs["mask_prior"] == 0.5
    assert not loaded.program.sparse_effects


def test_loading_a_lasso_started_model_does_not_rerun_the_lasso(monkeypatch, tmp_path):
    adata = pertpyro.datasets.simulate(
        n_cells=300, n_genes=20, n_targets=4, n_combinations=0, grn=True, grn_density=0.2, n_truth_cells=0, seed=2
    )
    pertpyro.setup_anndata(adata, batch_key="batch")
    model = pertpyro.PerturbationModel(adata, grn=True, grn_init_lasso=0.02, latent_dim=2, n_hidden=8)
    model.train(max_epochs=1, batch_size=128, progress_bar=False)
    model.save(tmp_path / "m")

    def refuse(*args, **kwargs):
        raise AssertionError("the Lasso ran while loading")

    monkeypatch.setattr(_grn, "lasso_edge_init", refuse)
    loaded = pertpyro.PerturbationModel.load(tmp_path / "m", adata)
    assert loaded.init_kwargs["grn_init_lasso"] == 0.02
    assert loaded.guide.grn.weight_loc.detach().equal(model.guide.grn.weight_loc.detach())
    assert loaded.guide.grn.logit.detach().equal(model.guide.grn.logit.detach())


def test_patience_without_early_stopping_is_refused(tiny_adata):
    model = pertpyro.PerturbationModel(tiny_adata, latent_dim=2, n_hidden=8)
    with pytest.raises(ValueError, match="patience.*early_stopping=True"):
        model.train(max_epochs=1, early_stopping=False, patience=5, progress_bar=False)
    model.train(max_epochs=1, early_stopping=False, progress_bar=False)  # the default patience is not a setting
    assert model.is_trained
