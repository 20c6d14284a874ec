"""shuffle_h5ad: a permuted copy of an h5ad file (every element kept), written chunk by chunk; clear errors."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import pertpyro
from pertpyro import cli
from pertpyro.data import shuffle_h5ad
from pertpyro.data._shuffle import SHUFFLE_KEY, is_shuffled


@pytest.fixture
def screen(tmp_path):
    adata = pertpyro.datasets.simulate(n_cells=250, n_genes=20, n_targets=3, seed=2)
    adata.X = sp.csr_matrix(adata.X)
    adata.layers["dense"] = adata.X.toarray() * 2
    adata.obsm["embedding"] = np.random.default_rng(0).normal(size=(adata.n_obs, 2))
    adata.obsp["graph"] = sp.random(adata.n_obs, adata.n_obs, density=0.02, format="csr", random_state=0)
    adata.varm["loading"] = np.arange(adata.n_vars * 3, dtype=float).reshape(-1, 3)
    adata.uns["note"] = "kept"
    del adata.uns["truth"]  # nested objects the h5ad writer does not take
    path = tmp_path / "screen.h5ad"
    adata.write_h5ad(path)
    return adata, path


def test_copy_is_a_permutation_of_every_cell_element(screen, tmp_path):
    adata, path = screen
    order = shuffle_h5ad(path, tmp_path / "shuffled.h5ad", seed=1, chunk_cells=37)  # several chunks and buckets
    out = ad.read_h5ad(tmp_path / "shuffled.h5ad")
    assert sorted(order) == list(range(adata.n_obs))
    assert not np.array_equal(order, np.arange(adata.n_obs))
    assert list(out.obs_names) == list(adata.obs_names[order])
    pd.testing.assert_frame_equal(out.obs, adata.obs.iloc[order])  # every column, categories included
    pd.testing.assert_frame_equal(out.var, adata.var)
    np.testing.assert_array_equal(out.X.toarray(), adata.X.toarray()[order])
    assert sp.issparse(out.X)
    assert isinstance(out.layers["dense"], np.ndarray)
    np.testing.assert_array_equal(out.layers["dense"], adata.layers["dense"][order])
    np.testing.assert_array_equal(out.obsm["embedding"], adata.obsm["embedding"][order])
    np.testing.assert_array_equal(out.obsp["graph"].toarray(), adata.obsp["graph"].toarray()[order][:, order])
    np.testing.assert_array_equal(out.varm["loading"], adata.varm["loading"])
    assert out.uns["note"] == "kept"
    assert out.uns[SHUFFLE_KEY] == {"seed": 1}
    assert is_shuffled(out)
    assert not is_shuffled(adata)


def test_order_follows_the_seed(screen, tmp_path):
    _, path = screen
    first = shuffle_h5ad(path, tmp_path / "a.h5ad", seed=4)
    again = shuffle_h5ad(path, tmp_path / "b.h5ad", seed=4, chunk_cells=60)
    other = shuffle_h5ad(path, tmp_path / "c.h5ad", seed=5)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    np.testing.assert_array_equal(
        ad.read_h5ad(tmp_path / "a.h5ad").X.toarray(), ad.read_h5ad(tmp_path / "b.h5ad").X.toarray()
    )


def test_bad_input_is_refused(screen, tmp_path):
    adata, path = screen
    with pytest.raises(FileNotFoundError, match="No h5ad file"):
        shuffle_h5ad(tmp_path / "missing.h5ad", tmp_path / "out.h5ad")
    with pytest.raises(ValueError, match="dst must differ"):
        shuffle_h5ad(path, path)
    with pytest.raises(ValueError, match="chunk_cells"):
        shuffle_h5ad(path, tmp_path / "out.h5ad", chunk_cells=0)
    (tmp_path / "taken.h5ad").write_bytes(b"")
    with pytest.raises(FileExistsError, match="overwrite"):
        shuffle_h5ad(path, tmp_path / "taken.h5ad")
    csc = adata.copy()
    csc.X = sp.csc_matrix(csc.X)
    csc.write_h5ad(tmp_path / "csc.h5ad")
    with pytest.raises(ValueError, match="CSC"):
        shuffle_h5ad(tmp_path / "csc.h5ad", tmp_path / "out.h5ad")
    with_raw = adata.copy()
    with_raw.raw = with_raw
    with_raw.write_h5ad(tmp_path / "raw.h5ad")
    with pytest.raises(ValueError, match="raw"):
        shuffle_h5ad(tmp_path / "raw.h5ad", tmp_path / "out.h5ad")
    assert not (tmp_path / "out.h5ad").exists()  # nothing half written is left behind
    assert not list(tmp_path.glob("*.partial"))
    assert not list(tmp_path.glob("*.buckets"))


def test_cli_shuffle(screen, tmp_path, capsys):
    adata, path = screen
    assert cli.main(["shuffle", str(path), str(tmp_path / "cli.h5ad"), "--seed", "3"]) == 0
    out = ad.read_h5ad(tmp_path / "cli.h5ad", backed="r")
    assert out.uns[SHUFFLE_KEY] == {"seed": 3}
    assert sorted(out.obs_names) == sorted(adata.obs_names)
    assert cli.main(["shuffle", str(path), str(tmp_path / "cli.h5ad")]) == 2  # exists: a one-line error
    assert "overwrite" in capsys.readouterr().err
