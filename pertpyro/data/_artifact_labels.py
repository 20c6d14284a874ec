"""Reading and checking per-cell artifact labels (``obs["artifact"]`` from :func:`pertpyro.pp.qc` or the user)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData


def artifact_labels(adata: AnnData, key: str) -> np.ndarray:
    """Boolean artifact labels of ``adata.obs[key]`` as a ``float32`` 0/1 array (never modifies ``adata``).

    Accepts a bool column, or integers / floats that are all 0 or 1 (no missing values).

    Raises
    ------
    ValueError
        If the column is missing, has missing values, or holds anything but booleans / 0 / 1.
    """
    if key not in adata.obs:
        raise ValueError(
            f"adata.obs has no artifact column {key!r}: run pertpyro.pp.qc(adata) to label artifacts, give your own "
            "boolean labels in that column, or pass artifact_key= naming it."
        )
    column = adata.obs[key]
    if isinstance(column.dtype, pd.CategoricalDtype):
        column = column.astype(object)
    if column.isna().any():
        raise ValueError(
            f"adata.obs[{key!r}] has {int(column.isna().sum())} missing values; labels must be True/False."
        )
    if pd.api.types.is_bool_dtype(column):
        return column.to_numpy(dtype=np.float32)
    values = column.to_numpy()
    if pd.api.types.is_numeric_dtype(column) or all(isinstance(v, bool | np.bool_) for v in values):
        numeric = values.astype(np.float64)
        if np.all((numeric == 0) | (numeric == 1)):
            return numeric.astype(np.float32)
    bad = pd.unique(column[~column.isin([True, False, 0, 1])].astype(str))[:5]
    raise ValueError(
        f"adata.obs[{key!r}] must hold booleans (or 0/1), got values such as {list(bad)} of dtype {column.dtype}."
    )
