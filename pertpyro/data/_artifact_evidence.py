"""QC evidence of the artifact block: per-cell ``obs`` columns (e.g. Scrublet's doublet score) as model inputs.

Each column is read with a transform to an unbounded scale, on which the artifact block gives it a Normal law per
artifact state (:meth:`pertpyro.module.ArtifactBlock.observe_evidence`):

- ``"logit"``: a score in [0, 1] (Scrublet's ``doublet_score``), clipped to ``[1e-3, 1 - 1e-3]``;
- ``"logit_pct"``: a percentage in [0, 100] (``pct_counts_mt`` of :func:`pertpyro.pp.qc`), as a share;
- ``"log1p"``: a non-negative count (``n_genes_by_counts``);
- ``"identity"``: any other real value.

Missing values stay ``NaN`` (left out of the likelihood).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData

EVIDENCE_TRANSFORMS = ("logit", "logit_pct", "log1p", "identity")
AUTO_EVIDENCE = ("doublet_score",)
"""Columns used as evidence by default when present (written by :func:`pertpyro.pp.qc`)."""
_KNOWN = {"doublet_score": "logit", "n_genes_by_counts": "log1p", "total_counts": "log1p"}
_CLIP = 1e-3


def _column(adata: AnnData, key: str) -> np.ndarray:
    if key not in adata.obs:
        raise ValueError(
            f"adata.obs has no QC evidence column {key!r}: run pertpyro.pp.qc(adata) (doublet_score, "
            "pct_counts_mt, n_genes_by_counts) or name existing columns in artifact_evidence=."
        )
    column = adata.obs[key]
    if not pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
        raise ValueError(f"adata.obs[{key!r}] must be numeric to serve as QC evidence, got dtype {column.dtype}.")
    return column.to_numpy(dtype=np.float64)


def infer_transform(key: str, values: np.ndarray) -> str:
    """The transform of column ``key`` (module docstring): by name where known, else by the range of ``values``."""
    if key in _KNOWN:
        return _KNOWN[key]
    if key.startswith("pct_counts"):
        return "logit_pct"
    finite = values[np.isfinite(values)]
    if len(finite) and finite.min() >= 0 and finite.max() <= 1:
        return "logit"
    if len(finite) and finite.min() >= 0:
        return "log1p"
    return "identity"


def resolve_evidence(adata: AnnData, keys: Sequence[str] | str | None) -> list[tuple[str, str]]:
    """``(column, transform)`` pairs of the QC evidence named by ``keys``.

    ``"auto"``: the columns of :data:`AUTO_EVIDENCE` present in ``adata.obs`` with at least two distinct finite
    values; ``None``: none; a sequence: those columns (each must exist and be numeric).
    """
    if keys is None:
        return []
    if isinstance(keys, str):
        if keys != "auto":
            raise ValueError(f"artifact_evidence must be 'auto', None or a list of obs columns, got {keys!r}.")
        chosen = []
        for key in AUTO_EVIDENCE:
            if key in adata.obs:
                values = _column(adata, key)
                if len(np.unique(values[np.isfinite(values)])) > 1:
                    chosen.append(key)
        keys = chosen
    keys = [str(k) for k in keys]
    if len(set(keys)) != len(keys):
        raise ValueError(f"artifact_evidence names a column twice: {keys}.")
    return [(key, infer_transform(key, _column(adata, key))) for key in keys]


def evidence_columns(adata: AnnData, keys: Sequence[str] | Sequence[tuple[str, str]] | str | None) -> list[list[str]]:
    """``[column, transform]`` pairs for a model's settings.

    ``keys`` is resolved by :func:`resolve_evidence`, or checked when given as pairs already (a saved model's).
    """
    if keys is not None and not isinstance(keys, str) and all(not isinstance(k, str) for k in keys):
        pairs = [(str(k), str(t)) for k, t in keys]
        for key, transform in pairs:
            if transform not in EVIDENCE_TRANSFORMS:
                raise ValueError(f"Unknown evidence transform {transform!r} of {key!r}; one of {EVIDENCE_TRANSFORMS}.")
            _column(adata, key)
        return [list(p) for p in pairs]
    return [list(p) for p in resolve_evidence(adata, keys)]


def evidence_matrix(adata: AnnData, evidence: Sequence[tuple[str, str]]) -> np.ndarray:
    """The transformed evidence columns, ``(n_obs, C)`` ``float32`` (``NaN`` where missing)."""
    out = np.empty((adata.n_obs, len(evidence)), dtype=np.float32)
    for c, (key, transform) in enumerate(evidence):
        values = _column(adata, key)
        if transform == "logit_pct":
            values, transform = values / 100.0, "logit"
        if transform == "logit":
            if np.any(values[np.isfinite(values)] < 0) or np.any(values[np.isfinite(values)] > 1):
                raise ValueError(f"adata.obs[{key!r}] must lie in [0, 1] (a score) to serve as evidence.")
            clipped = np.clip(values, _CLIP, 1 - _CLIP)
            values = np.log(clipped) - np.log1p(-clipped)
        elif transform == "log1p":
            if np.any(values[np.isfinite(values)] < 0):
                raise ValueError(f"adata.obs[{key!r}] must be non-negative (a count) to serve as evidence.")
            values = np.log1p(values)
        elif transform != "identity":
            raise ValueError(f"Unknown evidence transform {transform!r}; one of {EVIDENCE_TRANSFORMS}.")
        out[:, c] = values
    return out


__all__ = ["evidence_columns", "evidence_matrix", "resolve_evidence"]
