"""In-silico doublets of real cells: the counts of two observed cells summed, with the truth in ``obs``.

The standard way to develop and score doublet detectors (Scrublet, scDblFinder) on real data: a doublet holds the
molecules of two cells, so the sum of two real cells' counts is a doublet whose expression, depth and
overdispersion are those of real cells. :func:`add_doublets` turns a random fraction of the cells of a screen into
such doublets: each keeps its own perturbation label (the guide read out with its barcode) and gains the counts of
a partner cell, either with another perturbation (heterotypic) or with the same one (homotypic).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from pertpyro.data._simulate_artifacts import ARTIFACT_TYPE_KEY, ARTIFACT_TYPES, CLEAN_LAYER

DOUBLET_TYPE_KEY = "doublet_type"
DOUBLET_PARTNER_KEY = "doublet_partner"
DOUBLET_TYPES = ("none", "heterotypic", "homotypic")


def _check(adata: AnnData, doublet_rate: float, homotypic_fraction: float | None, key: str, layer: str | None) -> None:
    if isinstance(doublet_rate, bool) or not isinstance(doublet_rate, int | float) or not 0.0 <= doublet_rate < 0.5:
        raise ValueError(f"doublet_rate must be a number in [0, 0.5), got {doublet_rate!r}.")
    if homotypic_fraction is not None and not 0.0 <= homotypic_fraction <= 1.0:
        raise ValueError(f"homotypic_fraction must lie in [0, 1] or be None, got {homotypic_fraction!r}.")
    if key not in adata.obs:
        raise ValueError(f"adata.obs has no column {key!r} (the perturbation labels); pass perturbation_key=.")
    if layer is not None and layer not in adata.layers:
        raise ValueError(f"adata.layers has no layer {layer!r}.")
    if adata.n_obs < 2:
        raise ValueError("At least two cells are needed to make a doublet.")


def _partners(labels: np.ndarray, doublets: np.ndarray, homotypic: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A partner cell for each doublet: another cell with the same label (``homotypic``) or another label."""
    partner = np.empty(len(doublets), dtype=np.int64)
    cells_of = {label: np.flatnonzero(labels == label) for label in np.unique(labels)}
    n = len(labels)
    for i, (cell, same) in enumerate(zip(doublets, homotypic, strict=True)):
        pool = cells_of[labels[cell]]
        if same:
            pool = pool[pool != cell]
            if len(pool) == 0:
                raise ValueError(f"Label {labels[cell]!r} has a single cell: no homotypic partner for it.")
            partner[i] = pool[rng.integers(len(pool))]
        else:
            if len(cells_of[labels[cell]]) == n:
                raise ValueError("Every cell has the same label: no heterotypic partner exists.")
            while labels[candidate := rng.integers(n)] == labels[cell]:
                pass
            partner[i] = candidate
    return partner


def add_doublets(
    adata: AnnData,
    doublet_rate: float = 0.1,
    *,
    homotypic_fraction: float | None = None,
    perturbation_key: str = "perturbation",
    layer: str | None = None,
    seed: int = 0,
) -> AnnData:
    """A copy of ``adata`` in which a random ``doublet_rate`` of the cells are in-silico doublets of real cells.

    A doublet is a cell whose counts are its own plus those of a partner cell (its observed counts, never another
    doublet's sum); it keeps its own ``obs`` (perturbation label included). The partner has another perturbation
    label (heterotypic) or the same one (homotypic).

    Parameters
    ----------
    adata
        Raw counts of real cells (``X`` or ``layer``), perturbation labels in ``obs[perturbation_key]``.
    doublet_rate
        Fraction of cells made doublets, in [0, 0.5).
    homotypic_fraction
        Fraction of the doublets whose partner has the same perturbation label. ``None``: partners are drawn
        uniformly from all other cells, so the fraction is that of two random cells sharing a label.
    perturbation_key
        ``obs`` column of the perturbation labels.
    layer
        Layer holding the raw counts (``None``: ``X``); the doublets replace the counts there.
    seed
        Seed of the choice of doublets and partners.

    Returns
    -------
    A new AnnData with the doublets' counts replaced and the truth kept with the cells (it survives subsetting):
    ``obs["artifact_type"]`` (``"none"`` or ``"doublet"``), ``obs["doublet_type"]`` (``"none"``,
    ``"heterotypic"``, ``"homotypic"``), ``obs["doublet_partner"]`` (the partner's ``obs_names``, ``""`` for
    singlets) and ``layers["clean_counts"]`` (every cell's counts before).

    Raises
    ------
    ValueError
        For a rate outside [0, 0.5), a missing column or layer, or when no partner of the asked type exists.
    """
    _check(adata, doublet_rate, homotypic_fraction, perturbation_key, layer)
    rng = np.random.default_rng(seed)
    out = adata.copy()
    clean = sp.csr_matrix(out.X if layer is None else out.layers[layer], dtype=np.float32)
    labels = out.obs[perturbation_key].astype(str).to_numpy()
    n = out.n_obs
    n_doublet = round(doublet_rate * n)
    doublets = np.sort(rng.permutation(n)[:n_doublet])
    if homotypic_fraction is None:
        partner = (doublets + rng.integers(1, n, size=n_doublet)) % n  # any other cell
        homotypic = labels[partner] == labels[doublets]
    else:
        homotypic = rng.random(n_doublet) < homotypic_fraction
        partner = _partners(labels, doublets, homotypic, rng)
    mix = sp.csr_matrix((np.ones(n_doublet, np.float32), (doublets, partner)), shape=(n, n))
    counts = sp.csr_matrix(clean + mix @ clean, dtype=np.float32)
    if sp.issparse(out.X if layer is None else out.layers[layer]):
        new = counts
    else:
        new = counts.toarray()
    if layer is None:
        out.X = new
    else:
        out.layers[layer] = new
    out.layers[CLEAN_LAYER] = clean
    kind = np.zeros(n, dtype=np.int64)
    kind[doublets] = 1
    out.obs[ARTIFACT_TYPE_KEY] = pd.Categorical.from_codes(kind, ARTIFACT_TYPES)
    dtype = np.zeros(n, dtype=np.int64)
    dtype[doublets] = np.where(homotypic, 2, 1)
    out.obs[DOUBLET_TYPE_KEY] = pd.Categorical.from_codes(dtype, DOUBLET_TYPES)
    names = np.full(n, "", dtype=object)
    names[doublets] = np.asarray(out.obs_names, dtype=object)[partner]
    out.obs[DOUBLET_PARTNER_KEY] = names
    if "n_counts" in out.obs:  # keep the per-cell summaries true to the new counts
        out.obs["n_counts"] = np.asarray(counts.sum(axis=1)).ravel().astype(out.obs["n_counts"].dtype)
    if "n_genes" in out.obs:
        out.obs["n_genes"] = np.diff(counts.indptr).astype(out.obs["n_genes"].dtype)
    return out


__all__ = ["add_doublets"]
