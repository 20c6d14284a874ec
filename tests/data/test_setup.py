"""setup_anndata / validate_counts: every rejection of the data contract, and what a successful setup records."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from pertpyro._keys import REGISTRY_KEY
from pertpyro.data._registry import Registry, batch_codes, design_matrix, get_counts, get_registry
from pertpyro.data._setup import setup_anndata, validate_counts

LABELS = ["control", "control", "A", "B", "A+B", "C", "control", "B"]


def make_adata(
    labels: list[str] | None = None, *, n_genes: int = 5, sparse: bool = False, categorical: bool = True
) -> ad.AnnData:
    labels = LABELS if labels is None else labels
    rng = np.random.default_rng(0)
    counts = rng.poisson(3.0, size=(len(labels), n_genes)).astype(np.float32)
    counts[:, 0] += 1  # every cell has a positive library size
    obs = pd.DataFrame(
        {
            "perturbation": pd.Categorical(labels) if categorical else list(labels),
            "rep": pd.Categorical(["r2", "r1"] * (len(labels) // 2) + ["r1"] * (len(labels) % 2)),
        },
        index=[f"cell{i}" for i in range(len(labels))],
    )
    var = pd.DataFrame(index=[f"g{j}" for j in range(n_genes)])
    return ad.AnnData(sp.csr_matrix(counts) if sparse else counts, obs=obs, var=var)


# --------------------------------------------------------------------------------------------------------------
# Counts matrix
# --------------------------------------------------------------------------------------------------------------


def test_rejects_empty_cells():
    adata = make_adata()[:0].copy()
    with pytest.raises(ValueError, match=r"is empty \(0 cells x 5 genes\)"):
        validate_counts(adata.X, name="adata.X")


def test_rejects_empty_genes():
    adata = make_adata()[:, :0].copy()
    with pytest.raises(ValueError, match=r"adata.X is empty \(8 cells x 0 genes\)"):
        setup_anndata(adata)


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_rejects_nan_inf(sparse, bad):
    adata = make_adata(sparse=sparse)
    adata.X[2, 1] = bad
    with pytest.raises(ValueError, match=r"adata.X contains at least 1 NaN or infinite .* cell row 2"):
        setup_anndata(adata)


@pytest.mark.parametrize("sparse", [False, True])
def test_rejects_negative(sparse):
    adata = make_adata(sparse=sparse)
    adata.X[3, 0] = -1.0
    with pytest.raises(ValueError, match=r"negative value.*-1\.0 in cell row 3.*raw UMI counts"):
        setup_anndata(adata)


@pytest.mark.parametrize("sparse", [False, True])
def test_rejects_log_normalised(sparse):
    adata = make_adata(sparse=sparse)
    adata.X = np.log1p(adata.X)
    with pytest.raises(ValueError, match=r'non-integer .*looks normalised or log-transformed.*layer="counts"'):
        setup_anndata(adata)


def test_rejects_zero_total_cells():
    adata = make_adata()
    adata.X[[1, 4]] = 0
    with pytest.raises(ValueError, match=r"2 cell\(s\) with zero total counts \(rows 1, 4\).*filter_cells"):
        setup_anndata(adata)


def test_rejects_non_numeric_dtype():
    with pytest.raises(ValueError, match="dtype bool"):
        validate_counts(np.ones((2, 2), dtype=bool), name="adata.X")


def test_rejects_missing_layer():
    adata = make_adata()
    adata.layers["raw"] = adata.X.copy()
    with pytest.raises(ValueError, match=r"no layer 'counts'; available layers: \['raw'\]"):
        setup_anndata(adata, layer="counts")


def test_validate_counts_chunked_dense_reports_global_row(monkeypatch):
    import pertpyro.data._setup as setup_module

    monkeypatch.setattr(setup_module, "_CHUNK_ROWS", 3)
    monkeypatch.setattr(setup_module, "_CHUNK_VALUES", 4)
    x = np.ones((10, 4), dtype=np.float32)
    validate_counts(x, name="m")
    validate_counts(sp.csr_matrix(x), name="m")
    x[7, 2] = 0.5
    with pytest.raises(ValueError, match="cell row 7"):
        validate_counts(x, name="m")
    for fmt in (sp.csr_matrix, sp.csc_matrix, sp.coo_matrix, sp.csr_array):
        with pytest.raises(ValueError, match="cell row 7"):
            validate_counts(fmt(x), name="m")


def test_validate_counts_accepts_integer_dtypes():
    validate_counts(np.array([[1, 0], [0, 2]], dtype=np.uint16), name="m")
    validate_counts(sp.csr_matrix(np.array([[1, 0], [0, 2]], dtype=np.int64)), name="m")


# --------------------------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------------------------


def test_rejects_duplicate_genes():
    adata = make_adata()
    adata.var_names = ["g0", "g1", "g1", "g3", "g0"]
    with pytest.raises(ValueError, match=r"var_names has 2 duplicated name\(s\): 'g1', 'g0'.*var_names_make_unique"):
        setup_anndata(adata)


def test_rejects_duplicate_cells():
    adata = make_adata()
    adata.obs_names = ["c"] * adata.n_obs
    with pytest.raises(ValueError, match=r"obs_names has 1 duplicated name\(s\): 'c'.*obs_names_make_unique"):
        setup_anndata(adata)


# --------------------------------------------------------------------------------------------------------------
# Perturbation labels
# --------------------------------------------------------------------------------------------------------------


def test_rejects_missing_perturbation_column():
    adata = make_adata()
    with pytest.raises(
        ValueError, match=r"no perturbation column 'guide'; available obs columns: 'perturbation', 'rep'"
    ):
        setup_anndata(adata, perturbation_key="guide")


@pytest.mark.parametrize("categorical", [True, False])
def test_rejects_missing_labels(categorical):
    labels = ["control", None, "A", None, "B", "control"]
    adata = make_adata(labels, categorical=categorical)
    with pytest.raises(ValueError, match=r"adata.obs\['perturbation'\] has 2 missing \(NaN\) value"):
        setup_anndata(adata)


def test_rejects_no_control_cells_and_lists_frequent_labels():
    labels = ["non-targeting"] * 4 + ["A", "B", "B"]
    adata = make_adata(labels)
    with pytest.raises(
        ValueError, match=r"control label 'control'.*'non-targeting' \(4 cells\), 'B' \(2 cells\), 'A' \(1 cells\)"
    ):
        setup_anndata(adata)


def test_rejects_empty_combination_part():
    adata = make_adata(["control", "A++B", "A"])
    with pytest.raises(ValueError, match=r"\(1 cells\).*'A\+\+B' has an empty target"):
        setup_anndata(adata)


def test_rejects_control_inside_combination():
    adata = make_adata(["control", "A+control", "A"])
    with pytest.raises(ValueError, match=r"'A\+control' combines the control label 'control'"):
        setup_anndata(adata)


def test_rejects_bad_arguments():
    adata = make_adata()
    with pytest.raises(ValueError, match="delimiter must be a non-empty string"):
        setup_anndata(adata, delimiter="")
    with pytest.raises(TypeError, match="expects an AnnData"):
        setup_anndata(adata.X)


# --------------------------------------------------------------------------------------------------------------
# Batch column
# --------------------------------------------------------------------------------------------------------------


def test_rejects_missing_batch_column():
    adata = make_adata()
    with pytest.raises(ValueError, match=r"no batch column 'gem'; available obs columns"):
        setup_anndata(adata, batch_key="gem")


def test_rejects_nan_batch():
    adata = make_adata()
    adata.obs["rep"] = adata.obs["rep"].astype(object)
    adata.obs.iloc[0, adata.obs.columns.get_loc("rep")] = np.nan
    with pytest.raises(ValueError, match=r"adata.obs\['rep'\] has 1 missing \(NaN\)"):
        setup_anndata(adata, batch_key="rep")


# --------------------------------------------------------------------------------------------------------------
# What a successful setup records and leaves alone
# --------------------------------------------------------------------------------------------------------------


def test_setup_only_writes_registry():
    adata = make_adata(sparse=True)
    adata.layers["counts"] = adata.X.copy()
    adata.obs["score"] = np.arange(adata.n_obs, dtype=np.float32)
    before = adata.copy()
    x_id, layer_id = id(adata.X), id(adata.layers["counts"])
    setup_anndata(adata, batch_key="rep", layer="counts")

    assert id(adata.X) == x_id
    assert sp.isspmatrix_csr(adata.X)
    assert id(adata.layers["counts"]) == layer_id
    assert (adata.X != before.X).nnz == 0
    pd.testing.assert_frame_equal(adata.obs, before.obs)
    pd.testing.assert_frame_equal(adata.var, before.var)
    assert isinstance(adata.obs["perturbation"].dtype, pd.CategoricalDtype)
    assert isinstance(adata.obs["rep"].dtype, pd.CategoricalDtype)
    assert list(adata.layers.keys()) == ["counts"]
    assert set(adata.uns.keys()) == {REGISTRY_KEY}
    for mapping in (adata.obsm, adata.varm, adata.obsp, adata.varp):
        assert len(mapping) == 0


def test_dense_stays_same_object():
    adata = make_adata(categorical=False)
    x = adata.X
    setup_anndata(adata)
    assert adata.X is x
    assert adata.obs["perturbation"].dtype == object


def test_registry_contents():
    adata = make_adata()
    setup_anndata(adata, batch_key="rep")
    reg = get_registry(adata)
    assert reg == Registry(
        perturbation_key="perturbation",
        control="control",
        delimiter="+",
        targets=("A", "B", "C"),  # "A+B" contributes its parts, not a new target
        genes=("g0", "g1", "g2", "g3", "g4"),
        layer=None,
        batch_key="rep",
        batches=("r1", "r2"),
    )


def test_control_label_and_delimiter_configurable():
    labels = ["non-targeting", "STAT1", "IRF1_STAT1", "non-targeting"]
    adata = make_adata(labels)
    setup_anndata(adata, control="non-targeting", delimiter="_")
    reg = get_registry(adata)
    assert reg.control == "non-targeting"
    assert reg.targets == ("IRF1", "STAT1")


def test_unused_categories_are_not_registered():
    adata = make_adata()
    adata.obs["perturbation"] = adata.obs["perturbation"].cat.add_categories(["UNUSED"])
    adata.obs["rep"] = adata.obs["rep"].cat.add_categories(["r9"])
    setup_anndata(adata, batch_key="rep")
    reg = get_registry(adata)
    assert "UNUSED" not in reg.targets
    assert reg.batches == ("r1", "r2")


def test_batches_are_sorted_strings():
    adata = make_adata()
    adata.obs["gem"] = [3, 1, 2, 1, 3, 2, 1, 1]
    setup_anndata(adata, batch_key="gem")
    assert get_registry(adata).batches == ("1", "2", "3")
    np.testing.assert_array_equal(batch_codes(adata, get_registry(adata)), [2, 0, 1, 0, 2, 1, 0, 0])


def test_layer_is_validated_and_registered():
    adata = make_adata()
    adata.layers["counts"] = adata.X.copy()
    adata.X = np.log1p(adata.X)  # normalised X is fine when the counts are in a layer
    setup_anndata(adata, layer="counts")
    reg = get_registry(adata)
    assert reg.layer == "counts"
    assert get_counts(adata, reg) is adata.layers["counts"]


def test_setup_twice_replaces_registry():
    adata = make_adata()
    setup_anndata(adata)
    setup_anndata(adata, batch_key="rep")
    assert get_registry(adata).batch_key == "rep"


def test_only_control_cells_logs_warning(caplog):
    adata = make_adata(["control"] * 4)
    with caplog.at_level("WARNING", logger="pertpyro"):
        setup_anndata(adata)
    assert get_registry(adata).targets == ()
    assert "only control cells" in caplog.text


@pytest.mark.parametrize(("batch_key", "layer"), [(None, None), ("rep", "counts")])
def test_registry_roundtrips_through_h5ad(tmp_path, batch_key, layer):
    adata = make_adata(sparse=True)
    adata.layers["counts"] = adata.X.copy()
    setup_anndata(adata, batch_key=batch_key, layer=layer)
    original = get_registry(adata)
    path = tmp_path / "screen.h5ad"
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    assert Registry.from_dict(dict(back.uns[REGISTRY_KEY])) == original
    assert get_registry(back) == original


def test_only_control_registry_roundtrips_through_h5ad(tmp_path):
    adata = make_adata(["control"] * 2)
    setup_anndata(adata)
    adata.write_h5ad(tmp_path / "c.h5ad")
    assert get_registry(ad.read_h5ad(tmp_path / "c.h5ad")) == get_registry(adata)


def test_backed_anndata(tmp_path):
    for sparse in (False, True):
        adata = make_adata(sparse=sparse)
        path = tmp_path / f"backed_{sparse}.h5ad"
        adata.write_h5ad(path)
        backed = ad.read_h5ad(path, backed="r")
        try:
            setup_anndata(backed, batch_key="rep")
            assert get_registry(backed).targets == ("A", "B", "C")
        finally:
            backed.file.close()

    adata = make_adata()
    adata.X[5, 2] = 0.25
    adata.write_h5ad(tmp_path / "bad.h5ad")
    backed = ad.read_h5ad(tmp_path / "bad.h5ad", backed="r")
    try:
        with pytest.raises(ValueError, match="non-integer.*cell row 5"):
            setup_anndata(backed)
    finally:
        backed.file.close()


# --------------------------------------------------------------------------------------------------------------
# Registry helpers used by the models
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture
def registry():
    adata = make_adata()
    setup_anndata(adata, batch_key="rep")
    return get_registry(adata)


def test_design_matrix_combos(registry):
    design = design_matrix(["control", "A", "A+B", "C", "B+A"], registry)
    assert design.dtype == np.float32
    np.testing.assert_array_equal(
        design,
        [[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 0, 1], [1, 1, 0]],
    )
    assert design_matrix([], registry).shape == (0, 3)
    np.testing.assert_array_equal(design_matrix(pd.Series(["C", "control"], dtype="category"), registry)[0], [0, 0, 1])


def test_design_matrix_unknown_target(registry):
    with pytest.raises(ValueError, match=r"Unknown perturbation target 'STAT1' in label 'A\+STAT1'"):
        design_matrix(["A", "A+STAT1"], registry)


def test_design_matrix_bad_labels(registry):
    with pytest.raises(ValueError, match="empty target"):
        design_matrix(["A+"], registry)
    with pytest.raises(ValueError, match="combines the control label"):
        design_matrix(["control+A"], registry)


def test_batch_codes():
    adata = make_adata()
    setup_anndata(adata, batch_key="rep")
    reg = get_registry(adata)
    codes = batch_codes(adata, reg)
    assert codes.dtype == np.int64
    np.testing.assert_array_equal(codes, (adata.obs["rep"].astype(str) == "r2").to_numpy().astype(np.int64))

    new = make_adata()
    new.obs["rep"] = ["r3"] * new.n_obs
    with pytest.raises(ValueError, match=r"batch categories not seen at setup: \['r3'\]"):
        batch_codes(new, reg)
    with pytest.raises(ValueError, match="no batch column 'rep'"):
        batch_codes(ad.AnnData(new.X, obs=new.obs.drop(columns="rep")), reg)


def test_batch_codes_without_batch_key():
    adata = make_adata()
    setup_anndata(adata)
    np.testing.assert_array_equal(batch_codes(adata, get_registry(adata)), np.zeros(adata.n_obs, dtype=np.int64))


def test_label_parsing_is_explicit(tiny_adata, caplog):
    import logging

    from pertpyro.data import design_matrix, get_registry

    adata = tiny_adata.copy()
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    labels[:3] = "A_B"  # parts are known targets: taken as one new target, with a warning
    labels[3:6] = "A + B"  # spaces around the delimiter: the same combination as "A+B"
    adata.obs["perturbation"] = labels
    with caplog.at_level(logging.WARNING, logger="pertpyro"):
        setup_anndata(adata)
    assert "'A_B'" in caplog.text
    assert "'A+B'" in caplog.text
    registry = get_registry(adata)
    assert "A_B" in registry.targets
    np.testing.assert_array_equal(design_matrix(["A + B"], registry), design_matrix(["A+B"], registry))


def test_empty_anndata_says_empty():
    import anndata as ad

    with pytest.raises(ValueError, match="empty"):
        setup_anndata(ad.AnnData(np.zeros((0, 3), dtype=np.float32)))


# --------------------------------------------------------------------------------------------------------------
# Guides
# --------------------------------------------------------------------------------------------------------------

GUIDES = ["NT1", "NT2", "Ag1", "Bg1", "ABg1", "Cg1", "NT1", "Bg2"]


def test_guides_are_registered_with_their_label():
    adata = make_adata()
    adata.obs["guide"] = pd.Categorical(GUIDES)
    setup_anndata(adata, guide_key="guide")
    registry = get_registry(adata)
    assert registry.guide_key == "guide"
    assert registry.guides == ("ABg1", "Ag1", "Bg1", "Bg2", "Cg1", "NT1", "NT2")
    assert dict(zip(registry.guides, registry.guide_labels, strict=True))["Bg2"] == "B"
    assert registry.control_guides == ("NT1", "NT2")
    assert Registry.from_dict(registry.to_dict()) == registry


def test_without_guides_the_registry_has_none():
    adata = make_adata()
    setup_anndata(adata)
    registry = get_registry(adata)
    assert registry.guide_key is None
    assert registry.guides == ()
    assert registry.control_guides == ()


def test_guide_with_two_labels_is_rejected():
    adata = make_adata()
    adata.obs["guide"] = ["NT1", "NT2", "Ag1", "Ag1", "ABg1", "Cg1", "NT1", "Bg2"]  # Ag1 on an A and a B cell
    with pytest.raises(ValueError, match="'Ag1'.*2 perturbation labels"):
        setup_anndata(adata, guide_key="guide")
    assert REGISTRY_KEY not in adata.uns


def test_missing_guide_column_or_value_is_rejected():
    adata = make_adata()
    with pytest.raises(ValueError, match="no guide column 'sgRNA'"):
        setup_anndata(adata, guide_key="sgRNA")
    adata.obs["guide"] = [None, *GUIDES[1:]]
    with pytest.raises(ValueError, match="missing"):
        setup_anndata(adata, guide_key="guide")


def test_guides_roundtrip_through_h5ad(tmp_path):
    adata = make_adata()
    adata.obs["guide"] = GUIDES
    setup_anndata(adata, guide_key="guide")
    adata.write_h5ad(tmp_path / "a.h5ad")
    back = ad.read_h5ad(tmp_path / "a.h5ad")
    assert get_registry(back) == get_registry(adata)
