"""Query arguments out of their domain raise a clear ValueError before any work; a fuzz over them."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pertpyro


@pytest.fixture(scope="module")
def trained():
    import anndata as ad
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    labels = np.array(["control"] * 60 + ["A"] * 40 + ["B"] * 40)
    counts = rng.poisson(2.0, size=(len(labels), 12)).astype(np.float32) + 1
    adata = ad.AnnData(sp.csr_matrix(counts))
    adata.obs_names = [f"c{i}" for i in range(len(labels))]
    adata.var_names = [f"g{j}" for j in range(12)]
    adata.obs["perturbation"] = labels
    pertpyro.setup_anndata(adata)
    model = pertpyro.PerturbationModel(adata, latent_dim=2, n_hidden=8)
    model.train(max_epochs=1, batch_size=70, progress_bar=False)
    return model, adata


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m, a: m.ate(["A"], n_samples=2.5), "n_samples must be a positive integer, got 2.5"),
        (lambda m, a: m.ate(["A"], n_samples=0), "n_samples must be a positive integer"),
        (lambda m, a: m.ate(["A"], n_samples=True), "n_samples must be a positive integer"),
        (lambda m, a: m.ate(["A"], max_cells=0), "max_cells must be a positive integer or None"),
        (lambda m, a: m.ate(["A"], ci=1.5), "ci must lie strictly between 0 and 1"),
        (lambda m, a: m.ate(["A"], seed=-1), "seed must be a non-negative integer"),
        (lambda m, a: m.ate_draws(["A"], n_samples="3"), "n_samples must be a positive integer"),
        (lambda m, a: m.ate_probability(["A"], max_cells=-5), "max_cells must be"),
        (lambda m, a: m.counterfactual(a[:5], do={"perturbation": "A"}, n_samples=0), "n_samples must be"),
        (lambda m, a: m.counterfactual(a[:5], do={"perturbation": "A"}, batch_size=0), "batch_size must be"),
        (lambda m, a: m.iwelbo(a, n_samples=0), "n_samples must be"),
        (lambda m, a: m.calibrate(n_replicas=0), "n_replicas must be"),
    ],
)
def test_bad_query_arguments(trained, call, message):
    model, adata = trained
    with pytest.raises(ValueError, match=message):
        call(model, adata)


VALUES = st.one_of(
    st.integers(min_value=-3, max_value=3),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.none(),
    st.booleans(),
    st.text(max_size=2),
    st.just(np.int64(2)),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n_samples=VALUES, max_cells=VALUES, seed=VALUES, ci=VALUES)
def test_fuzz_ate_arguments(trained, n_samples, max_cells, seed, ci):
    """Any mix of values: a table of the right shape, or a ValueError that names an argument."""
    model, _ = trained
    try:
        table = model.ate(["A"], n_samples=n_samples, max_cells=max_cells, seed=seed, ci=ci)
    except ValueError as err:
        message = str(err)
        table = None
    if table is None:
        assert any(name in message for name in ("n_samples", "max_cells", "seed", "ci")), message
        return
    assert isinstance(table, pd.DataFrame)
    assert len(table) == 12
    assert np.isfinite(table[["mean", "lower", "upper"]].to_numpy()).all()
