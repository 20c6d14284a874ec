"""add_negative_controls: control cells of chosen non-targeting guides (or random groups) become null pseudo-targets."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from pertpyro.data import add_negative_controls, get_registry, negative_control_labels, setup_anndata


def screen(n_per_guide: int = 60) -> ad.AnnData:
    guides = [f"NT{i}" for i in range(1, 6) for _ in range(n_per_guide)] + ["Ag1"] * 80 + ["Bg1"] * 70
    labels = ["control" if g.startswith("NT") else g[0] for g in guides]
    counts = np.random.default_rng(0).poisson(3.0, size=(len(guides), 4)).astype(np.float32) + 1
    obs = pd.DataFrame({"perturbation": pd.Categorical(labels), "guide": pd.Categorical(guides)})
    obs.index = [f"c{i}" for i in range(len(guides))]
    return ad.AnnData(counts, obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(4)]))


def test_guides_become_pseudo_targets_recorded_and_registered():
    adata = screen()
    nulls = add_negative_controls(adata, 2, guide_key="guide", seed=3)
    assert nulls == negative_control_labels(adata)
    assert len(nulls) == 2
    assert all(n.startswith("null_NT") for n in nulls)
    for label in nulls:  # exactly the cells of that guide, nothing else
        guide = label.removeprefix("null_")
        assert (adata.obs["perturbation"] == label).sum() == 60
        assert set(adata.obs.loc[adata.obs["perturbation"] == label, "guide"]) == {guide}
    assert (adata.obs["perturbation"] == "control").sum() == 180
    assert nulls == add_negative_controls(screen(), 2, guide_key="guide", seed=3)  # deterministic under seed
    setup_anndata(adata, guide_key="guide")
    registry = get_registry(adata)
    assert set(nulls) <= set(registry.targets)
    assert len(registry.control_guides) == 3


def test_without_guides_random_groups_of_control_cells():
    adata = screen()
    nulls = add_negative_controls(adata, 2, cells_per_control=40)
    assert nulls == ["null_1", "null_2"]
    assert adata.uns["pertpyro_negative_controls"] == {"null_1": 40, "null_2": 40}
    assert (adata.obs["perturbation"] == "control").sum() == 300 - 80
    assert add_negative_controls(adata, 1, cells_per_control=30, seed=1) == ["null_3"]  # numbered on
    assert negative_control_labels(adata) == ["null_1", "null_2", "null_3"]  # the first ones stay recorded


def test_zero_controls_changes_nothing():
    adata = screen()
    before = adata.obs["perturbation"].copy()
    assert add_negative_controls(adata, 0, guide_key="guide") == []
    assert negative_control_labels(adata) == []
    pd.testing.assert_series_equal(adata.obs["perturbation"], before)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_controls": 5, "guide_key": "guide"}, "need 6 non-targeting guides"),
        ({"n_controls": 3, "guide_key": "guide"}, "keep at least 50%"),
        ({"n_controls": 1, "guides": ["Ag1"], "guide_key": "guide"}, "not guides of control cells"),
        ({"n_controls": 1, "guide_key": "sgRNA"}, "no guide column 'sgRNA'"),
        ({"n_controls": -1}, "non-negative integer"),
        ({"n_controls": 2, "cells_per_control": 200}, "keep at least 50%"),
    ],
)
def test_bad_requests_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        add_negative_controls(screen(), **kwargs)
