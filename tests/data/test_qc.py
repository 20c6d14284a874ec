"""Tests of :func:`pertpyro.data._qc.qc`: planted artifacts are found, inputs are validated, nothing is mutated."""

import logging
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from pertpyro.data._qc import qc

PAPALEXI = Path(__file__).resolve().parents[2] / "pertpyro" / "data" / "files" / "papalexi2021_thp1_lowmoi.h5ad"


def _synthetic(seed=0, *, n_clean=400, n_low=12, n_mito=12, n_doublets=24, depth=2000.0, sparse=True):
    """Four cell types (40 marker genes each), 13 MT- genes (~3% of counts), planted artifacts.

    Low-quality cells have ~40 counts (50x below the median library), high-mito cells 30% mitochondrial counts,
    doublets are the sum of two clean cells of different types (heterotypic, what Scrublet can see).
    """
    rng = np.random.default_rng(seed)
    n_types = 4
    genes = [f"MT-{i}" for i in range(13)] + [f"RPL{i}" for i in range(10)] + ["HBB", "HBA1"]
    genes += [f"G{i}" for i in range(200)]
    base = rng.gamma(0.6, 1.0, size=len(genes))
    base[:13] = 0.03 * base[13:].sum() / 13
    base[13:23] *= 5
    base[23:25] = 0.0005
    profiles = np.tile(base, (n_types, 1))
    for t in range(n_types):
        profiles[t, 25 + 40 * t : 65 + 40 * t] *= 12
    profiles /= profiles.sum(1, keepdims=True)
    types = rng.integers(n_types, size=n_clean)
    lib = np.exp(rng.normal(np.log(depth), 0.25, size=n_clean))
    clean = rng.poisson(lib[:, None] * profiles[types])
    low = rng.poisson(depth / 50 * profiles[rng.integers(n_types, size=n_low)])
    p = profiles[rng.integers(n_types, size=n_mito)].copy()
    p[:, :13] *= 0.3 / p[:, :13].sum(1, keepdims=True)
    p[:, 13:] *= 0.7 / p[:, 13:].sum(1, keepdims=True)
    mito = rng.poisson(depth * p)
    pairs = []
    while len(pairs) < n_doublets:
        i, j = rng.integers(n_clean, size=2)
        if types[i] != types[j]:
            pairs.append((i, j))
    doublets = np.array([clean[i] + clean[j] for i, j in pairs], dtype=np.float64).reshape(n_doublets, len(genes))
    X = np.vstack([clean, low, mito, doublets]).astype(np.float32)
    truth = ["clean"] * n_clean + ["low"] * n_low + ["mito"] * n_mito + ["doublet"] * n_doublets
    obs = pd.DataFrame({"truth": truth}, index=[f"cell{i}" for i in range(len(truth))])
    return ad.AnnData(sp.csr_matrix(X) if sparse else X, obs=obs, var=pd.DataFrame(index=genes))


@pytest.fixture(scope="module")
def flagged():
    adata = _synthetic()
    qc(adata)
    return adata


def test_planted_artifacts_are_flagged(flagged):
    obs = flagged.obs
    reason = obs["artifact_reason"]
    truth = obs["truth"]
    # tiny libraries sit ~3.9 log units below the median, ~16 scaled MADs: every one must be caught
    assert reason[truth == "low"].str.contains("low_counts").all()
    # 30% vs ~3% mito is ~50 scaled MADs away: every one must be caught
    assert reason[truth == "mito"].str.contains("high_mito").all()
    # Scrublet on 448 cells sees heterotypic doublets well but not perfectly: over simulator seeds 0-6 recall was
    # 0.71-1.0 (1.0 for this seed), so 0.7 is the floor
    assert reason[truth == "doublet"].str.contains("doublet").mean() >= 0.7
    called = obs["predicted_doublet"]
    # over the same seeds 1-5% of clean cells were called doublets (auto threshold, 4 clusters of 100 cells)
    assert called[truth == "clean"].mean() <= 0.05
    assert (truth[called] == "doublet").mean() >= 0.6
    # clean cells: at most 5% flagged for any reason (k = 5 / 5 / 3 scaled MADs flag ~0.1% of normal cells;
    # the rest is Scrublet false positives above)
    assert obs["artifact"][truth == "clean"].mean() <= 0.05
    # the bool column is exactly "has a reason"; clean cells have an empty reason
    assert (obs["artifact"] == (reason != "")).all()
    assert set(reason[~obs["artifact"]]) == {""}


def test_columns_and_uns(flagged, tmp_path):
    obs = flagged.obs
    for col in ["total_counts", "n_genes_by_counts", "pct_counts_mt", "pct_counts_ribo", "pct_counts_hb"]:
        assert col in obs
    assert obs["artifact"].dtype == bool
    assert obs["predicted_doublet"].dtype == bool
    np.testing.assert_allclose(obs["total_counts"], np.asarray(flagged.X.sum(1)).ravel(), rtol=1e-6)
    np.testing.assert_array_equal(obs["n_genes_by_counts"], np.diff(flagged.X.indptr))
    mt = np.asarray(flagged[:, flagged.var_names.str.startswith("MT-")].X.sum(1)).ravel()
    np.testing.assert_allclose(obs["pct_counts_mt"], 100 * mt / obs["total_counts"], rtol=1e-6)
    table = flagged.uns["artifact_qc"]["thresholds"]
    assert list(table.index) == ["all"]
    assert 0 < table.loc["all", "doublet_threshold"] < 1
    flagged.write_h5ad(tmp_path / "qc.h5ad")  # everything written is serialisable
    back = ad.read_h5ad(tmp_path / "qc.h5ad")
    pd.testing.assert_series_equal(back.obs["artifact_reason"].astype(str), obs["artifact_reason"].astype(str))


def test_sparse_stays_sparse_x_unchanged_dense_agrees():
    adata = _synthetic(1, n_clean=200, n_low=5, n_mito=5, n_doublets=10)
    before = adata.X.copy()
    qc(adata, doublets=False)
    assert sp.issparse(adata.X)
    assert (adata.X != before).nnz == 0
    dense = _synthetic(1, n_clean=200, n_low=5, n_mito=5, n_doublets=10, sparse=False)
    out = qc(dense, doublets=False, inplace=False)
    assert isinstance(dense.X, np.ndarray)
    pd.testing.assert_frame_equal(out, adata.obs[out.columns])


def test_scrublet_runs_on_a_copy():
    adata = _synthetic(2, n_clean=200, n_low=0, n_mito=0, n_doublets=10)
    adata.layers["counts"] = adata.X.copy()
    adata.X = sp.csr_matrix(adata.X.shape, dtype=np.float32)  # X empty: qc must read the layer
    qc(adata, layer="counts")
    assert (adata.layers["counts"] != adata.layers["counts"].astype(np.int64)).nnz == 0  # still integer counts
    assert adata.X.nnz == 0
    assert adata.obs["doublet_score"].between(0, 1).all()


def test_inplace_false_leaves_adata_untouched():
    adata = _synthetic(3, n_clean=150, n_low=5, n_mito=5, n_doublets=0)
    obs_before, uns_before = adata.obs.copy(), dict(adata.uns)
    out = qc(adata, doublets=False, inplace=False)
    pd.testing.assert_frame_equal(adata.obs, obs_before)
    assert dict(adata.uns) == uns_before
    assert list(out.index) == list(adata.obs_names)
    assert {"total_counts", "n_genes_by_counts", "pct_counts_mt", "artifact", "artifact_reason"} <= set(out)
    assert "doublet_score" not in out


def test_existing_labels_are_not_overwritten():
    adata = _synthetic(4, n_clean=150, n_low=5, n_mito=5, n_doublets=0)
    adata.obs["artifact"] = False
    with pytest.raises(ValueError, match="overwrite=True"):
        qc(adata, doublets=False)
    assert not adata.obs["artifact"].any()  # untouched
    assert "artifact_reason" not in adata.obs
    qc(adata, doublets=False, key_added="qc_artifact")
    assert adata.obs["qc_artifact"].sum() >= 10
    assert not adata.obs["artifact"].any()
    qc(adata, doublets=False, overwrite=True)
    assert adata.obs["artifact"].sum() >= 10


def test_per_batch_mads_differ_from_global():
    # batch "shallow" (60 cells) is sequenced 4x less deeply than batch "deep" (300 cells); otherwise alike
    deep = _synthetic(5, n_clean=300, n_low=0, n_mito=0, n_doublets=0)
    shallow = _synthetic(6, n_clean=60, n_low=0, n_mito=0, n_doublets=0, depth=500.0)
    adata = ad.concat({"deep": deep, "shallow": shallow}, label="batch", index_unique="-")
    n_mads = {"counts": 3.0, "genes": None}
    pooled = qc(adata, doublets=False, inplace=False, n_mads=n_mads)
    per_batch = qc(adata, batch_key="batch", doublets=False, inplace=False, n_mads=n_mads)
    is_shallow = (adata.obs["batch"] == "shallow").to_numpy()
    low_pooled = pooled["artifact_reason"].str.contains("low_counts").to_numpy()
    low_batch = per_batch["artifact_reason"].str.contains("low_counts").to_numpy()
    # pooled, the median and MAD are the deep batch's (log-depth sd ~0.25), so the shallow batch, log 4 = 1.39
    # lower, sits ~5 sds below the median: most of it is flagged. Per batch, 3 sds flag ~0.1% of a normal sample.
    assert low_pooled[is_shallow].mean() > 0.8
    assert low_batch[is_shallow].mean() < 0.05
    assert low_batch[~is_shallow].mean() < 0.05
    qc(adata, batch_key="batch", doublets=False, n_mads=n_mads)
    table = adata.uns["artifact_qc"]["thresholds"]
    assert list(table.index) == ["deep", "shallow"]
    assert table.loc["deep", "min_counts"] > 3 * table.loc["shallow", "min_counts"]
    assert np.isnan(table.loc["deep", "min_genes"])  # genes flag disabled with None


def test_bad_inputs_raise():
    adata = _synthetic(7, n_clean=100, n_low=0, n_mito=0, n_doublets=0)
    neg = adata.copy()
    neg.X.data[0] = -1
    with pytest.raises(ValueError, match="negative"):
        qc(neg, doublets=False)
    logged = adata.copy()
    logged.X = logged.X.log1p()
    with pytest.raises(ValueError, match="non-integer"):
        qc(logged, doublets=False)
    nan = adata.copy()
    nan.X.data[0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        qc(nan, doublets=False)
    with pytest.raises(ValueError, match="Layer 'counts' not found"):
        qc(adata, layer="counts")
    with pytest.raises(ValueError, match="batch_key 'sample'"):
        qc(adata, batch_key="sample")
    with pytest.raises(ValueError, match="Unknown n_mads"):
        qc(adata, n_mads={"mt": 3})
    with pytest.raises(ValueError, match="doublets must be"):
        qc(adata, doublets="yes")
    with pytest.raises(ValueError, match="adata is a view"):
        qc(adata[:50])
    assert "artifact" not in adata.obs


def test_ensembl_ids_need_gene_symbols(caplog):
    adata = _synthetic(8, n_clean=100, n_low=0, n_mito=5, n_doublets=0)
    adata.var["symbol"] = adata.var_names
    adata.var_names = [f"ENSG{i:011d}" for i in range(adata.n_vars)]
    with pytest.raises(ValueError, match="gene_symbols="):
        qc(adata, doublets=False)
    with pytest.raises(ValueError, match="gene_symbols 'name'"):
        qc(adata, doublets=False, gene_symbols="name")
    qc(adata, doublets=False, gene_symbols="symbol")
    assert adata.obs["artifact_reason"].str.contains("high_mito").sum() == 5
    # symbols but no MT genes: a logged warning, never a crash
    with caplog.at_level(logging.WARNING, logger="pertpyro.data._qc"):
        out = qc(adata, doublets=False, gene_symbols="symbol", mito_prefix="mito:", inplace=False)
    assert "No gene in var['symbol'] start with ('mito:',)" in caplog.text
    assert (out["pct_counts_mt"] == 0).all()


def test_scrublet_failure_strict_or_auto(caplog):
    adata = _synthetic(9, n_clean=30, n_low=0, n_mito=0, n_doublets=0)
    with pytest.raises(ValueError, match="Scrublet failed on all cells .30 cells.*at least 50 cells"):
        qc(adata)
    with caplog.at_level(logging.WARNING, logger="pertpyro.data._qc"):
        qc(adata, doublets="auto")
    assert "Skipping doublet detection" in caplog.text
    assert adata.obs["doublet_score"].isna().all()
    assert not adata.obs["predicted_doublet"].any()


def test_papalexi_without_mito_genes(caplog):
    full = ad.read_h5ad(PAPALEXI)
    adata = full[:3000, ~full.var_names.str.startswith("MT-")].copy()
    x_before = adata.X.copy()
    with caplog.at_level(logging.WARNING, logger="pertpyro.data._qc"):
        qc(adata, batch_key="bio_rep", doublets="auto")
    assert "No gene in var_names start with ('MT-', 'mt-')" in caplog.text
    assert (adata.obs["pct_counts_mt"] == 0).all()
    assert "high_mito" not in "".join(adata.obs["artifact_reason"])
    assert adata.obs["doublet_score"].notna().mean() > 0.99
    # a real screen is mostly clean: well under a quarter of the cells get any label
    assert adata.obs["artifact"].mean() < 0.25
    assert sp.issparse(adata.X)
    assert (adata.X != x_before).nnz == 0
