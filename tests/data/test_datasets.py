"""Shipped datasets: shapes, labels and that they pass the data contract."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from pertpyro.data._datasets import collectri, papalexi2021
from pertpyro.data._registry import get_registry
from pertpyro.data._setup import setup_anndata


@pytest.fixture(scope="module")
def papalexi():
    return papalexi2021()


def test_papalexi_shape_and_labels(papalexi):
    assert papalexi.shape == (20729, 299)
    categories = list(papalexi.obs["perturbation"].cat.categories)
    assert len(categories) == 26
    assert "control" in categories
    assert (papalexi.obs["perturbation"] == "control").sum() == 2386
    assert set(papalexi.obs["bio_rep"].astype(str)) == {"rep_1", "rep_2", "rep_3"}


def test_papalexi_integer_counts(papalexi):
    assert sp.issparse(papalexi.X)
    data = papalexi.X.data
    assert np.all(data >= 0)
    np.testing.assert_array_equal(data, np.round(data))


def test_papalexi_setup(papalexi):
    adata = papalexi.copy()
    setup_anndata(adata, perturbation_key="perturbation", control="control", batch_key="bio_rep")
    reg = get_registry(adata)
    assert reg.n_targets == 25
    assert reg.batches == ("rep_1", "rep_2", "rep_3")
    assert reg.genes == tuple(adata.var_names)
    assert "STAT1" in reg.targets
    assert "control" not in reg.targets


def test_papalexi_new_object_each_call(papalexi):
    assert papalexi2021() is not papalexi


def test_collectri():
    net = collectri()
    assert isinstance(net, pd.DataFrame)
    assert list(net.columns) == ["source", "target", "weight", "PMID"]
    assert len(net) == 43178
    assert set(net["weight"].unique()) == {-1, 1}
    assert not net.duplicated(["source", "target"]).any()
    assert net[["source", "target"]].notna().all().all()
    assert {"STAT1", "MYC", "AP1", "NFKB"} <= set(net["source"])
