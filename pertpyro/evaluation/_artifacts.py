"""Evaluation of the artifact block: detection against truth, QC pass rates, distances of cleaned cells.

- :func:`artifact_detection`: AUROC and AUPRC of per-cell artifact scores against true labels.
- :func:`qc_pass_rate`: fraction of cells (generated, cleaned, observed) that pass :func:`pertpyro.pp.qc`'s
  criteria with thresholds set on a *reference* data set (median +- k scaled MADs of log library size and log
  detected genes, upper bound on % mitochondrial counts). Thresholds are never set on the cells being scored, so
  the rate can fall anywhere in [0, 1] (a rate computed against the scored cells' own medians is at least about
  one half by construction).
- :func:`energy_distance`: the energy distance between two sets of cells on ``log1p(1e4 x / sum x)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
import torch
from anndata import AnnData
from sklearn.metrics import average_precision_score, roc_auc_score

from pertpyro.data._qc import _MIN_PCT_SPREAD, _cell_metrics, _gene_sets, _robust_bounds
from pertpyro.data._statistics import log_normalise


def artifact_detection(truth: Sequence[bool] | np.ndarray, score: Sequence[float] | np.ndarray) -> dict[str, float]:
    """AUROC and AUPRC of ``score`` (higher = more likely an artifact) against boolean ``truth``.

    Raises
    ------
    ValueError
        If the lengths differ or ``truth`` holds a single class.
    """
    truth, score = np.asarray(truth, dtype=bool), np.asarray(score, dtype=np.float64)
    if truth.shape != score.shape:
        raise ValueError(f"truth and score differ in length: {truth.shape} vs {score.shape}.")
    if truth.all() or not truth.any():
        raise ValueError("truth must hold both artifacts and clean cells to score a detector.")
    return {
        "auroc": float(roc_auc_score(truth, score)),
        "auprc": float(average_precision_score(truth, score)),
        "prevalence": float(truth.mean()),
    }


def _counts(x: np.ndarray | sp.spmatrix | AnnData, layer: str | None = None) -> np.ndarray | sp.spmatrix:
    if isinstance(x, AnnData):
        return x.layers[layer] if layer is not None else x.X
    return x


def qc_pass_rate(
    cells: AnnData | np.ndarray | sp.spmatrix,
    reference: AnnData,
    *,
    layer: str | None = None,
    reference_layer: str | None = None,
    n_mads: tuple[float, float, float] = (5.0, 5.0, 3.0),
    mito_prefix: str | Sequence[str] = ("MT-", "mt-"),
) -> float:
    """Fraction of ``cells`` passing :func:`pertpyro.pp.qc`'s outlier criteria with ``reference``'s thresholds.

    Parameters
    ----------
    cells
        Counts to score (cells x the reference's genes): AnnData, dense array or sparse matrix.
    reference
        Data whose medians and MADs set the thresholds (e.g. the observed cells, or the true clean cells).
    layer, reference_layer
        Layers holding the counts (``None``: ``X``).
    n_mads
        ``k`` for log library size, log detected genes and % mitochondrial counts (:func:`pertpyro.pp.qc`'s
        defaults).
    mito_prefix
        Prefix(es) of mitochondrial genes in ``reference.var_names`` (no such gene: the criterion is skipped).

    Returns
    -------
    The pass rate in [0, 1].
    """
    sets = _gene_sets(reference, None, mito_prefix, None, None)
    ref = _cell_metrics(_counts(reference, reference_layer), sets)
    query = _counts(cells, layer)
    if query.shape[1] != reference.n_vars:
        raise ValueError(f"cells have {query.shape[1]} genes, the reference {reference.n_vars}.")
    metrics = _cell_metrics(query, sets)
    passed = np.ones(query.shape[0], dtype=bool)
    for name, k in (("total", n_mads[0]), ("n_genes", n_mads[1])):
        low, high, ok = _robust_bounds(np.log1p(ref[name].astype(np.float64)), k)
        values = np.log1p(metrics[name].astype(np.float64))
        if ok:
            passed &= (values >= low) & (values <= high)
    if "mito" in ref and sets["mito"].any():
        _, high, ok = _robust_bounds(ref["mito"], n_mads[2], floor=_MIN_PCT_SPREAD)
        if ok:
            passed &= metrics["mito"] <= high
    return float(passed.mean())


def _log_normalise(x: np.ndarray | sp.spmatrix) -> torch.Tensor:
    dense = sp.csr_matrix(x).toarray() if sp.issparse(x) else np.asarray(x)
    return log_normalise(torch.as_tensor(dense, dtype=torch.float64))


def energy_distance(
    x: np.ndarray | sp.spmatrix, y: np.ndarray | sp.spmatrix, *, max_cells: int = 2000, seed: int = 0
) -> float:
    """Energy distance ``2 E|X - Y| - E|X - X'| - E|Y - Y'|`` between two sets of cells (counts, rows = cells).

    Computed on ``log1p(1e4 x / sum x)`` with Euclidean distances; each set is subsampled to at most
    ``max_cells`` cells. Zero when the two distributions are equal, positive otherwise (a V-statistic: small
    positive values between samples of one distribution).
    """
    rng = np.random.default_rng(seed)

    def pick(m: np.ndarray | sp.spmatrix) -> torch.Tensor:
        rows = np.arange(m.shape[0])
        if len(rows) > max_cells:
            rows = np.sort(rng.choice(rows, size=max_cells, replace=False))
        return _log_normalise(m[rows])

    a, b = pick(x), pick(y)
    if a.shape[0] == 0 or b.shape[0] == 0:
        raise ValueError("Both sets need at least one cell.")
    cross = torch.cdist(a, b).mean()
    return float(2 * cross - torch.cdist(a, a).mean() - torch.cdist(b, b).mean())


__all__ = ["artifact_detection", "energy_distance", "qc_pass_rate"]
