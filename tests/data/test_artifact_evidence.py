"""QC evidence columns of the artifact block: which columns 'auto' takes, their transforms, bad inputs."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from pertpyro.data._artifact_evidence import evidence_columns, evidence_matrix, resolve_evidence


def _cells() -> ad.AnnData:
    obs = pd.DataFrame(
        {
            "doublet_score": [0.1, 0.5, np.nan, 0.9],
            "pct_counts_mt": [1.0, 10.0, 50.0, 2.0],
            "n_genes_by_counts": [10, 20, 30, 40],
            "shift": [-1.0, 0.0, 1.0, 2.0],
        },
        index=[f"c{i}" for i in range(4)],
    )
    return ad.AnnData(np.ones((4, 2), dtype=np.float32), obs=obs)


def test_auto_takes_the_doublet_score_when_it_varies():
    cells = _cells()
    assert resolve_evidence(cells, "auto") == [("doublet_score", "logit")]
    assert resolve_evidence(cells, None) == []
    cells.obs["doublet_score"] = np.nan  # Scrublet failed everywhere: nothing to learn from
    assert resolve_evidence(cells, "auto") == []
    del cells.obs["doublet_score"]
    assert resolve_evidence(cells, "auto") == []


def test_transforms_map_each_column_to_an_unbounded_scale():
    cells = _cells()
    pairs = resolve_evidence(cells, ["doublet_score", "pct_counts_mt", "n_genes_by_counts", "shift"])
    assert [t for _, t in pairs] == ["logit", "logit_pct", "log1p", "identity"]
    values = evidence_matrix(cells, pairs)
    np.testing.assert_allclose(values[[0, 1, 3], 0], np.log([0.1 / 0.9, 1.0, 9.0]), rtol=1e-5)
    assert np.isnan(values[2, 0])  # missing stays missing
    np.testing.assert_allclose(values[2, 1], 0.0, atol=1e-6)  # 50% mitochondrial: logit 0
    np.testing.assert_allclose(values[:, 2], np.log1p([10, 20, 30, 40]), rtol=1e-6)
    np.testing.assert_allclose(values[:, 3], [-1, 0, 1, 2])
    assert evidence_columns(cells, [["shift", "log1p"]]) == [["shift", "log1p"]]  # a saved model's pairs


def test_bad_evidence_inputs():
    cells = _cells()
    with pytest.raises(ValueError, match="names a column twice"):
        resolve_evidence(cells, ["shift", "shift"])
    with pytest.raises(ValueError, match="Unknown evidence transform"):
        evidence_columns(cells, [["shift", "sqrt"]])
    with pytest.raises(ValueError, match="must be non-negative"):
        evidence_matrix(cells, [("shift", "log1p")])
