"""Fuzz: random AnnData, labels and configs end in a result or in one of the package's documented errors."""

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pertpyro
from pertpyro._config import ConfigError, validate_config

LABELS = st.sampled_from(["control", "A", "B", "A+B", "A_B", "A + B", " ", "+A", "A+control", "B+B", "ctrl"])
VALUES = st.one_of(st.integers(-3, 50), st.floats(allow_nan=True, allow_infinity=True), st.just(0.5), st.just(2.0))


@st.composite
def screens(draw):
    n_cells = draw(st.integers(0, 12))
    n_genes = draw(st.integers(0, 6))
    values = draw(st.lists(VALUES, min_size=n_cells * n_genes, max_size=n_cells * n_genes))
    matrix = np.asarray(values, dtype=np.float64).reshape(n_cells, n_genes)
    adata = ad.AnnData(sp.csr_matrix(matrix) if draw(st.booleans()) else matrix)
    adata.obs_names = [f"c{i}" for i in range(n_cells)]
    adata.var_names = [f"g{j}" for j in range(n_genes)]
    adata.obs["perturbation"] = draw(st.lists(LABELS, min_size=n_cells, max_size=n_cells))
    return adata


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(adata=screens(), delimiter=st.sampled_from(["+", "_", ""]), min_cells=st.integers(1, 5))
def test_setup_anndata_accepts_or_explains(adata, delimiter, min_cells):
    try:
        pertpyro.setup_anndata(adata, delimiter=delimiter, min_cells=min_cells)
    except ValueError as err:  # the documented error, with a message
        message = str(err)
        assert message
    else:
        registry = pertpyro.get_registry(adata)
        assert "control" not in registry.targets
        assert np.isfinite(adata.X.toarray() if sp.issparse(adata.X) else adata.X).all()


SECTIONS = st.sampled_from(["data", "split", "model", "train", "evaluate", "calibrate", "qc", "nonsense"])
KEYS = st.sampled_from(["max_epochs", "lr", "seed", "latent_dim", "kind", "dataset", "n_samples", "run", "typo"])
LEAVES = st.one_of(st.integers(-5, 5), st.floats(allow_nan=False), st.text(max_size=5), st.booleans(), st.none())


@settings(max_examples=150, deadline=None)
@given(raw=st.one_of(st.dictionaries(SECTIONS, st.dictionaries(KEYS, LEAVES, max_size=3), max_size=4), LEAVES))
def test_config_schema_accepts_or_explains(raw):
    try:
        config = validate_config(raw)
    except ConfigError as err:
        message = str(err)
        assert message
        assert "\n" not in message  # one line
    else:
        assert config["train"]["max_epochs"] is None or config["train"]["max_epochs"] >= 1


@pytest.mark.parametrize("bad", [{"train": {"max_epochs": "ten"}}, {"train": {"max_epochs": -1}}, {"model": {"x": 1}}])
def test_config_schema_refuses_known_mistakes(bad):
    with pytest.raises(ConfigError):
        validate_config(bad)
