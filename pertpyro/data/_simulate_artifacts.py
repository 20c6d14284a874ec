"""Technical artifacts for the simulator: doublets and low-quality cells, with their clean truth.

Applied by :func:`pertpyro.datasets.simulate` after the clean screen is drawn (``doublet_rate``,
``low_quality_rate``), on its own random stream, so the clean cells of a seed are the same with and without
artifacts:

- a **doublet** is the sum of its own counts and those of another cell chosen at random (with its own, possibly
  different, perturbation); it keeps its own perturbation label (the guide read out with its barcode);
- a **low-quality** (dying) cell keeps its mitochondrial reads but loses most of its cytoplasmic ones: the counts of
  the other genes are thinned binomially to a fraction ``keep ~ Uniform(low_quality_keep)``. Its library drops and its
  % mitochondrial counts rise, what :func:`pertpyro.pp.qc` looks for.

The truth travels with the cells, so that it survives subsetting: ``obs["artifact_type"]`` (``"none"``,
``"doublet"``, ``"low_quality"``) and ``layers["clean_counts"]`` (each cell's counts before the artifact).
``uns["truth"]["artifacts"]`` records the settings, the mitochondrial genes and each doublet's partner cell.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

ARTIFACT_TYPE_KEY = "artifact_type"
CLEAN_LAYER = "clean_counts"
ARTIFACT_TYPES = ("none", "doublet", "low_quality")
MITO_PREFIX = "MT-"


def check_artifact_args(
    doublet_rate: float,
    low_quality_rate: float,
    n_mito: int,
    low_quality_keep: tuple[float, float],
    *,
    n_genes: int,
    n_targets: int,
) -> None:
    """Validate the artifact options of :func:`pertpyro.datasets.simulate` (``ValueError`` naming the problem)."""
    for name, value in (("doublet_rate", doublet_rate), ("low_quality_rate", low_quality_rate)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be a number in [0, 1), got {value!r}.")
    if doublet_rate + low_quality_rate >= 1.0:
        raise ValueError(f"doublet_rate + low_quality_rate must be below 1, got {doublet_rate + low_quality_rate}.")
    if isinstance(n_mito, bool) or not isinstance(n_mito, int) or n_mito < 0:
        raise ValueError(f"n_mito must be a non-negative integer, got {n_mito!r}.")
    if low_quality_rate > 0 and n_targets + n_mito > n_genes:
        raise ValueError(f"n_targets + n_mito ({n_targets} + {n_mito}) must not exceed n_genes ({n_genes}).")
    low, high = low_quality_keep
    if not 0.0 < low <= high <= 1.0:
        raise ValueError(
            f"low_quality_keep must be a range (low, high) with 0 < low <= high <= 1, got {low_quality_keep}."
        )


def add_artifacts(
    adata: AnnData,
    rng: np.random.Generator,
    *,
    doublet_rate: float,
    low_quality_rate: float,
    n_mito: int = 5,
    low_quality_keep: tuple[float, float] = (0.1, 0.3),
) -> AnnData:
    """Turn a random subset of the clean simulated cells into doublets and low-quality cells (in place).

    Parameters
    ----------
    adata
        Output of the clean simulator (CSR counts in ``X``).
    rng
        Random stream of the artifacts.
    doublet_rate
        Fraction of cells made doublets.
    low_quality_rate
        Fraction of cells made low-quality.
    n_mito
        Number of genes renamed ``MT-<name>`` (the last ``n_mito`` genes, never a target) when ``low_quality_rate``
        is positive; their counts are kept by low-quality cells.
    low_quality_keep
        Range of the fraction of non-mitochondrial counts a low-quality cell keeps.

    Returns
    -------
    ``adata``, with ``X`` replaced, ``obs["artifact_type"]``, ``obs["n_counts"]`` updated, ``layers["clean_counts"]``
    and ``uns["truth"]["artifacts"]``.
    """
    clean = sp.csr_matrix(adata.X, dtype=np.float32)
    n_cells, n_genes = clean.shape
    kind = np.zeros(n_cells, dtype=np.int64)
    order = rng.permutation(n_cells)
    n_doublet, n_low = round(doublet_rate * n_cells), round(low_quality_rate * n_cells)
    doublets, low = order[:n_doublet], order[n_doublet : n_doublet + n_low]
    kind[doublets], kind[low] = 1, 2
    partner = np.full(n_cells, -1, dtype=np.int64)
    # partner: any other cell (offset in 1..n-1 so never the cell itself)
    partner[doublets] = (doublets + rng.integers(1, n_cells, size=n_doublet)) % n_cells

    x = clean.copy()
    if n_doublet:
        mix = sp.csr_matrix((np.ones(n_doublet, np.float32), (doublets, partner[doublets])), shape=(n_cells, n_cells))
        x = x + mix @ clean  # doublet rows gain their partner's clean counts
    mito = np.arange(n_genes - n_mito, n_genes) if low_quality_rate > 0 else np.arange(0)
    if n_low:
        keep = rng.uniform(*low_quality_keep, size=n_low)
        rows = x[low].toarray()
        is_mito = np.zeros(n_genes, dtype=bool)
        is_mito[mito] = True
        prob = np.where(is_mito[None, :], 1.0, keep[:, None])
        thinned = rng.binomial(rows.astype(np.int64), prob).astype(np.float32)
        selector = sp.csr_matrix((np.ones(n_low, np.float32), (low, np.arange(n_low))), shape=(n_cells, n_low))
        untouched = sp.diags((kind != 2).astype(np.float32))
        x = untouched @ x + selector @ sp.csr_matrix(thinned)
    x = sp.csr_matrix(x, dtype=np.float32)
    x.eliminate_zeros()
    adata.X = x
    adata.layers[CLEAN_LAYER] = clean
    adata.obs[ARTIFACT_TYPE_KEY] = pd.Categorical.from_codes(kind, ARTIFACT_TYPES)
    adata.obs["n_counts"] = np.asarray(x.sum(axis=1), dtype=np.int64).ravel()
    if len(mito):
        names = np.asarray(adata.var_names, dtype=object)
        names[mito] = [f"{MITO_PREFIX}{g}" for g in names[mito]]
        adata.var_names = pd.Index(names, dtype=object)
        adata.uns["truth"]["genes"] = list(names)
    adata.uns["truth"]["artifacts"] = {
        "doublet_rate": float(doublet_rate),
        "low_quality_rate": float(low_quality_rate),
        "low_quality_keep": np.asarray(low_quality_keep, dtype=np.float64),
        "mito_genes": [str(g) for g in np.asarray(adata.var_names)[mito]],
        "doublet_partner": partner,
    }
    return adata
