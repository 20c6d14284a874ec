"""Quality control: per-cell metrics, MAD outliers and doublet scores, written as artifact labels.

:func:`qc` never drops a cell. It labels technical artifacts (low-quality cells, doublets) so that a model with an
``artifact`` site (CRADLE-style) can condition on them, and so that users can filter or inspect them themselves.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from pertpyro._keys import ARTIFACT_KEY, DOUBLET_SCORE_KEY

logger = logging.getLogger(__name__)

TOTAL_COUNTS_KEY = "total_counts"
N_GENES_KEY = "n_genes_by_counts"
PCT_MITO_KEY = "pct_counts_mt"
PCT_RIBO_KEY = "pct_counts_ribo"
PCT_HB_KEY = "pct_counts_hb"
PREDICTED_DOUBLET_KEY = "predicted_doublet"

HB_PATTERN = r"^(HB[ABDEGMQZ]\d*|Hb[abq][-\d].*)$"
"""Haemoglobin genes: human HBA1/2, HBB, HBD, HBE1, HBG1/2, HBM, HBQ1, HBZ; mouse Hba-*, Hbb-*, Hbq*.

Excludes the non-globin HBP1, HBS1L and HBEGF.
"""

_MAD_SCALE = 1.4826  # MAD of a normal distribution times this = its standard deviation
_MIN_PCT_SPREAD = 0.5  # percentage points; floor of the scaled MAD of the % metrics
_METRICS = ("counts", "genes", "mito", "hb")
_ID_PATTERN = re.compile(r"^(ENS[A-Z]*G\d{6,}(\.\d+)?|\d+)$")
_CHUNK_ROWS = 10_000
_MIN_SCRUBLET_CELLS = 50  # Scrublet's kNN uses round(0.5 * sqrt(n)) neighbours: 4 at 50 cells


def qc(
    adata: AnnData,
    *,
    layer: str | None = None,
    batch_key: str | None = None,
    n_mads: Sequence[float] | Mapping[str, float] = (5.0, 5.0, 3.0, 3.0),
    gene_symbols: str | None = None,
    mito_prefix: str | Sequence[str] | None = ("MT-", "mt-"),
    ribo_prefix: str | Sequence[str] | None = ("RPS", "RPL", "Rps", "Rpl"),
    hb_pattern: str | None = HB_PATTERN,
    doublets: bool | Literal["auto"] = True,
    doublet_threshold: float | None = None,
    expected_doublet_rate: float = 0.06,
    scrublet_kwargs: Mapping[str, Any] | None = None,
    random_state: int = 0,
    key_added: str = ARTIFACT_KEY,
    overwrite: bool = False,
    inplace: bool = True,
) -> pd.DataFrame | None:
    """Label low-quality cells and doublets as technical artifacts.

    Per cell, computes the library size, the number of detected genes and the percentage of counts in
    mitochondrial, ribosomal and haemoglobin genes. A cell is an outlier when

    - ``log1p`` library size or ``log1p`` detected genes lies more than ``k`` MADs below or above the median
      (reasons ``low_counts``, ``high_counts``, ``low_genes``, ``high_genes``);
    - % mitochondrial or % haemoglobin counts lies more than ``k`` MADs above the median (``high_mito``,
      ``high_hb``). Ribosomal % is reported but never flagged: it depends on cell type more than on quality.

    The MAD is scaled by 1.4826 (as scater's ``isOutlier``), so ``k`` is in standard deviations for normally
    distributed metrics; multiply ``k`` by 1/1.4826 to reproduce unscaled-MAD cut-offs. For the % metrics the scaled
    MAD is floored at 0.5 percentage points, so a metric that is almost always 0 (haemoglobin outside blood, or
    mitochondrial genes in a panel without them) flags only cells with more than ``k * 0.5`` % of their counts
    there, not every cell with a single read. A log metric with zero MAD flags nothing (with a logged warning).
    Medians and MADs are computed within each batch when ``batch_key`` is given.

    Doublets are scored with :func:`scanpy.pp.scrublet` (Wolock et al., Cell Systems 2019), run on a float copy
    of the counts, per batch when ``batch_key`` is given, with exact nearest neighbours. Without
    ``doublet_threshold``, the threshold of each batch is the valley between the two modes of the histogram of
    simulated-doublet scores (Scrublet's rule, implemented here, binned on the neighbour fraction behind the score,
    so that scikit-image is not needed); when that histogram is not bimodal (each mode must hold at least 5% of the
    simulated doublets), no cell of the batch is called a doublet and a warning is logged. Cells that Scrublet
    cannot score (fewer than 3 detected genes) get a ``NaN`` score and are not called doublets. A batch needs at
    least 50 cells for Scrublet.

    Cells are never dropped and the count matrix is never modified.

    Parameters
    ----------
    adata
        Cells x genes AnnData with raw UMI counts in ``X`` or in ``layers[layer]``; dense or sparse (the matrix is
        read in row chunks and never densified whole).
    layer
        Layer holding raw counts; ``None`` reads ``X``.
    batch_key
        ``obs`` column of batches (sample, replicate, gem group). Outlier thresholds and Scrublet then run within
        each batch, so a shallow batch is not flagged as a whole.
    n_mads
        Outlier width ``k`` in scaled MADs, either a sequence ``(counts, genes, mito, hb)`` or a mapping with
        some of the keys ``"counts"``, ``"genes"``, ``"mito"``, ``"hb"`` (missing keys keep their default).
        ``None`` or ``inf`` for a metric disables its outlier flag.
    gene_symbols
        ``var`` column holding gene symbols, for data whose ``var_names`` are Ensembl or numeric IDs.
        ``None`` matches the prefixes against ``var_names``.
    mito_prefix
        Prefix(es) of mitochondrial gene symbols; ``None`` skips the metric and its column.
    ribo_prefix
        Prefix(es) of ribosomal protein gene symbols; ``None`` skips the metric and its column.
    hb_pattern
        Regular expression matched against gene symbols to find haemoglobin genes (default :data:`HB_PATTERN`);
        ``None`` skips the metric and its column.
    doublets
        ``True`` runs Scrublet and raises a :class:`ValueError` when it fails (e.g. a batch with fewer than 50
        cells, or too few expressed genes); ``"auto"`` runs it and, on failure, logs a warning and leaves the affected cells unscored
        (``NaN`` score, not called doublets); ``False`` skips doublet detection.
    doublet_threshold
        Fixed Scrublet score threshold in (0, 1) for every batch; ``None`` sets it per batch automatically.
    expected_doublet_rate
        Expected fraction of doublets, passed to Scrublet (about 0.008 per 1000 recovered 10x cells).
    scrublet_kwargs
        Extra keyword arguments for :func:`scanpy.pp.scrublet` (e.g. ``n_prin_comps``, ``sim_doublet_ratio``,
        ``use_approx_neighbors``; the default here is ``use_approx_neighbors=False``).
    random_state
        Seed of the doublet simulation and of the neighbour search.
    key_added
        Name of the boolean artifact column; reasons go to ``f"{key_added}_reason"`` and thresholds to
        ``uns[f"{key_added}_qc"]``.
    overwrite
        Replace existing label columns (``key_added``, its reason column, ``doublet_score``, ``predicted_doublet``)
        and the ``uns`` entry. Without it, existing labels raise a :class:`ValueError`.
    inplace
        Write into ``adata``; ``False`` returns the columns as a DataFrame and leaves ``adata`` untouched.

    Returns
    -------
    ``None`` when ``inplace`` (the columns below are written to ``adata.obs`` and the per-batch thresholds to
    ``adata.uns[f"{key_added}_qc"]``), else a :class:`~pandas.DataFrame` indexed by ``obs_names`` with the columns:

    ``total_counts``
        Library size (sum of counts), float.
    ``n_genes_by_counts``
        Number of genes with a positive count, int.
    ``pct_counts_mt``, ``pct_counts_ribo``, ``pct_counts_hb``
        Percent (0-100) of counts in mitochondrial, ribosomal and haemoglobin genes; 0 when no gene matches.
        Each is absent when its prefix or pattern is ``None``.
    ``doublet_score``
        Scrublet score in [0, 1], ``NaN`` for unscored cells. Absent when ``doublets=False``.
    ``predicted_doublet``
        Bool, Scrublet score above the batch threshold. Absent when ``doublets=False``.
    ``{key_added}``
        Bool, the cell has at least one reason.
    ``{key_added}_reason``
        ``";"``-joined reasons among ``low_counts``, ``high_counts``, ``low_genes``, ``high_genes``,
        ``high_mito``, ``high_hb``, ``doublet`` (e.g. ``"low_counts;low_genes"``); ``""`` for clean cells.

    The ``uns`` entry is ``{"batch_key": str, "n_mads": dict, "thresholds": DataFrame}``, one threshold row per
    batch (``"all"`` without ``batch_key``): ``min_counts``, ``max_counts``, ``min_genes``, ``max_genes``,
    ``max_pct_mt``, ``max_pct_hb`` and ``doublet_threshold`` (``NaN`` where not applied).

    Examples
    --------
    >>> import pertpyro
    >>> adata = pertpyro.datasets.papalexi2021()  # doctest: +SKIP
    >>> pertpyro.pp.qc(adata, batch_key="bio_rep")  # doctest: +SKIP
    >>> adata.obs["artifact_reason"].value_counts()  # doctest: +SKIP
    """
    reason_key = f"{key_added}_reason"
    uns_key = f"{key_added}_qc"
    k = _parse_n_mads(n_mads)
    if doublets not in (True, False, "auto"):
        raise ValueError(f"doublets must be True, False or 'auto', got {doublets!r}.")
    if not 0.0 < expected_doublet_rate < 1.0:
        raise ValueError(f"expected_doublet_rate must lie in (0, 1), got {expected_doublet_rate}.")
    if doublet_threshold is not None and not 0.0 < doublet_threshold < 1.0:
        raise ValueError(f"doublet_threshold must lie in (0, 1) or be None, got {doublet_threshold}.")
    if inplace:
        if adata.is_view:
            raise ValueError("adata is a view; call qc on adata.copy() or pass inplace=False.")
        labels = [key_added, reason_key] + ([DOUBLET_SCORE_KEY, PREDICTED_DOUBLET_KEY] if doublets else [])
        existing = [c for c in labels if c in adata.obs.columns] + (
            [f"uns[{uns_key!r}]"] if uns_key in adata.uns else []
        )
        if existing and not overwrite:
            raise ValueError(
                f"adata already holds {existing}; qc never overwrites labels silently. Pass overwrite=True to "
                f"replace them, or another key_added= to keep both."
            )

    X = _get_counts(adata, layer)
    batches = _get_batches(adata, batch_key)
    gene_sets = _gene_sets(adata, gene_symbols, mito_prefix, ribo_prefix, hb_pattern)

    metrics = _cell_metrics(X, gene_sets)
    out = pd.DataFrame(index=adata.obs_names.copy())
    out[TOTAL_COUNTS_KEY] = metrics.pop("total")
    out[N_GENES_KEY] = metrics.pop("n_genes")
    pct_keys = {"mito": PCT_MITO_KEY, "ribo": PCT_RIBO_KEY, "hb": PCT_HB_KEY}
    for name, values in metrics.items():
        out[pct_keys[name]] = values

    reasons, thresholds = _outliers(out, batches, k, has_mito="mito" in metrics, has_hb="hb" in metrics)

    if doublets:
        scores, called, doublet_thr = _doublets(
            X,
            batches,
            strict=doublets is True,
            threshold=doublet_threshold,
            expected_doublet_rate=expected_doublet_rate,
            random_state=random_state,
            scrublet_kwargs=scrublet_kwargs,
        )
        out[DOUBLET_SCORE_KEY] = scores
        out[PREDICTED_DOUBLET_KEY] = called
        reasons["doublet"] = called
        thresholds["doublet_threshold"] = pd.Series(doublet_thr)
    else:
        thresholds["doublet_threshold"] = np.nan

    reason = np.full(adata.n_obs, "", dtype=object)
    for name, mask in reasons.items():
        reason[mask] = np.where(reason[mask] == "", name, reason[mask] + ";" + name)
    out[key_added] = reason != ""
    out[reason_key] = pd.Series(reason, index=out.index, dtype=str)

    n_flagged = int(out[key_added].sum())
    counts = {name: int(mask.sum()) for name, mask in reasons.items()}
    logger.info("qc: %d of %d cells labelled as artifacts %s.", n_flagged, adata.n_obs, counts)

    if not inplace:
        return out
    for col in out.columns:
        adata.obs[col] = out[col].to_numpy()
    adata.uns[uns_key] = {
        "batch_key": "" if batch_key is None else batch_key,
        "n_mads": {name: float(v) for name, v in k.items()},
        "thresholds": thresholds,
    }
    return None


def _parse_n_mads(n_mads: Sequence[float] | Mapping[str, float]) -> dict[str, float]:
    """Normalise ``n_mads`` to ``{metric: k}``, with ``inf`` meaning "never flag"."""
    defaults = dict(zip(_METRICS, (5.0, 5.0, 3.0, 3.0), strict=True))
    if isinstance(n_mads, Mapping):
        unknown = set(n_mads) - set(_METRICS)
        if unknown:
            raise ValueError(f"Unknown n_mads keys {sorted(unknown)}; use some of {list(_METRICS)}.")
        given = dict(n_mads)
    else:
        values = list(n_mads)
        if len(values) != len(_METRICS):
            raise ValueError(f"n_mads must have {len(_METRICS)} entries {_METRICS}, got {len(values)}.")
        given = dict(zip(_METRICS, values, strict=True))
    out = {}
    for name in _METRICS:
        v = given.get(name, defaults[name])
        v = np.inf if v is None else float(v)
        if not v > 0:
            raise ValueError(f"n_mads[{name!r}] must be positive (or None/inf to disable), got {v}.")
        out[name] = v
    return out


def _get_counts(adata: AnnData, layer: str | None) -> Any:
    """Return the raw-count matrix, after cheap shape checks (values are checked while reading)."""
    if layer is None:
        X = adata.X
        if X is None:
            raise ValueError("adata.X is None; pass layer= naming the layer with raw counts.")
    else:
        if layer not in adata.layers:
            raise ValueError(f"Layer {layer!r} not found; available layers: {list(adata.layers.keys())}.")
        X = adata.layers[layer]
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise ValueError(f"adata is empty ({adata.n_obs} cells x {adata.n_vars} genes).")
    return X


def _get_batches(adata: AnnData, batch_key: str | None) -> dict[str, np.ndarray]:
    """Map each batch label to the integer positions of its cells (one group ``"all"`` without batches)."""
    if batch_key is None:
        return {"all": np.arange(adata.n_obs)}
    if batch_key not in adata.obs.columns:
        raise ValueError(f"batch_key {batch_key!r} is not an obs column; available: {list(adata.obs.columns)}.")
    labels = adata.obs[batch_key]
    if labels.isna().any():
        raise ValueError(f"obs[{batch_key!r}] has {int(labels.isna().sum())} missing values; label every cell.")
    codes, uniques = pd.factorize(labels.astype(str), sort=True)
    return {str(u): np.flatnonzero(codes == i) for i, u in enumerate(uniques)}


def _as_prefixes(prefix: str | Sequence[str] | None) -> tuple[str, ...] | None:
    if prefix is None:
        return None
    return (prefix,) if isinstance(prefix, str) else tuple(prefix)


def _gene_sets(
    adata: AnnData,
    gene_symbols: str | None,
    mito_prefix: str | Sequence[str] | None,
    ribo_prefix: str | Sequence[str] | None,
    hb_pattern: str | None,
) -> dict[str, np.ndarray]:
    """Boolean gene masks of the requested gene sets, with checks that the names are symbols."""
    if gene_symbols is None:
        names = pd.Index(adata.var_names.astype(str))
        where = "var_names"
    else:
        if gene_symbols not in adata.var.columns:
            raise ValueError(
                f"gene_symbols {gene_symbols!r} is not a var column; available: {list(adata.var.columns)}."
            )
        names = pd.Index(adata.var[gene_symbols].astype(str))
        where = f"var[{gene_symbols!r}]"
    mito, ribo = _as_prefixes(mito_prefix), _as_prefixes(ribo_prefix)
    if mito is None and ribo is None and hb_pattern is None:
        return {}
    id_like = np.asarray(names.str.match(_ID_PATTERN), dtype=bool).mean()
    if id_like >= 0.9:
        hint = (
            "pass gene_symbols='<var column with symbols>'"
            if gene_symbols is None
            else "pass gene_symbols= naming a column of symbols"
        )
        raise ValueError(
            f"{where} look like Ensembl or numeric IDs ({id_like:.0%} of genes, e.g. {names[0]!r}), so the "
            f"mitochondrial / ribosomal / haemoglobin genes cannot be found by symbol; {hint} "
            f"(var columns: {list(adata.var.columns)}), or set mito_prefix=ribo_prefix=hb_pattern=None."
        )
    sets = {}
    for name, mask, rule in (
        ("mito", None if mito is None else names.str.startswith(mito), f"start with {mito}"),
        ("ribo", None if ribo is None else names.str.startswith(ribo), f"start with {ribo}"),
        ("hb", None if hb_pattern is None else names.str.match(hb_pattern), f"match {hb_pattern!r}"),
    ):
        if mask is None:
            continue
        mask = np.asarray(mask, dtype=bool)
        if not mask.any():
            logger.warning(
                "No gene in %s %s; the %s percentage is 0 for every cell. If %s are not gene symbols, pass "
                "gene_symbols= naming a var column that holds them.",
                where,
                rule,
                name,
                where,
            )
        sets[name] = mask
    return sets


def _row_chunks(X: Any) -> Iterator[tuple[slice, Any]]:
    for start in range(0, X.shape[0], _CHUNK_ROWS):
        rows = slice(start, min(start + _CHUNK_ROWS, X.shape[0]))
        yield rows, X[rows]


def _check_values(values: np.ndarray) -> None:
    """Raise unless ``values`` are finite, non-negative integers (raw counts)."""
    if values.size == 0:
        return
    if np.issubdtype(values.dtype, np.integer):
        if values.min() < 0:
            raise ValueError("The count matrix has negative values; qc needs raw UMI counts (pass layer=).")
        return
    if not np.issubdtype(values.dtype, np.floating):
        raise ValueError(f"The count matrix has dtype {values.dtype}; qc needs numeric raw UMI counts.")
    if not np.isfinite(values).all():
        raise ValueError("The count matrix has NaN or infinite values; qc needs raw UMI counts.")
    if values.min() < 0:
        raise ValueError("The count matrix has negative values; qc needs raw UMI counts (pass layer=).")
    frac = values != np.round(values)
    if frac.any():
        example = values[frac][0]
        raise ValueError(
            f"The count matrix has non-integer values (e.g. {example:g}); it looks normalised or log-transformed. "
            f"qc needs raw UMI counts: pass layer= naming a layer that holds them."
        )


def _cell_metrics(X: Any, gene_sets: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Library size, detected genes and % of counts per gene set, read in row chunks (sparse stays sparse)."""
    n = X.shape[0]
    total = np.zeros(n)
    n_genes = np.zeros(n, dtype=np.int64)
    names = list(gene_sets)
    indicator = np.stack([gene_sets[s] for s in names], axis=1).astype(np.float64) if names else None
    in_sets = np.zeros((n, len(names)))
    for rows, chunk in _row_chunks(X):
        if sp.issparse(chunk):
            chunk = sp.csr_matrix(chunk)
            _check_values(chunk.data)
            n_genes[rows] = np.asarray((chunk > 0).sum(axis=1)).ravel()
        else:
            chunk = np.asarray(chunk)
            _check_values(chunk)
            n_genes[rows] = (chunk > 0).sum(axis=1)
        total[rows] = np.asarray(chunk.sum(axis=1), dtype=np.float64).ravel()
        if indicator is not None:
            in_sets[rows] = np.asarray(chunk @ indicator)
    out = {"total": total, "n_genes": n_genes}
    denom = np.where(total > 0, total, 1.0)
    for j, name in enumerate(names):
        out[name] = 100.0 * in_sets[:, j] / denom
    return out


def _robust_bounds(x: np.ndarray, k: float, *, floor: float = 0.0) -> tuple[float, float, bool]:
    """Median -/+ ``k`` scaled MADs of ``x``; the flag is False when the spread is zero (nothing to flag)."""
    med = float(np.median(x))
    spread = max(_MAD_SCALE * float(np.median(np.abs(x - med))), floor)
    return med - k * spread, med + k * spread, spread > 0


def _outliers(
    metrics: pd.DataFrame, batches: dict[str, np.ndarray], k: dict[str, float], *, has_mito: bool, has_hb: bool
) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
    """Flag MAD outliers per batch; return reason masks and a per-batch threshold table (in original units)."""
    n = len(metrics)
    log_counts = np.log1p(metrics[TOTAL_COUNTS_KEY].to_numpy())
    log_genes = np.log1p(metrics[N_GENES_KEY].to_numpy(dtype=np.float64))
    reasons = {r: np.zeros(n, dtype=bool) for r in ("low_counts", "high_counts", "low_genes", "high_genes")}
    specs = [("counts", log_counts, True), ("genes", log_genes, True)]
    if has_mito:
        reasons["high_mito"] = np.zeros(n, dtype=bool)
        specs.append(("mito", metrics[PCT_MITO_KEY].to_numpy(), False))
    if has_hb:
        reasons["high_hb"] = np.zeros(n, dtype=bool)
        specs.append(("hb", metrics[PCT_HB_KEY].to_numpy(), False))
    columns = ["min_counts", "max_counts", "min_genes", "max_genes", "max_pct_mt", "max_pct_hb"]
    table = pd.DataFrame(np.nan, index=pd.Index(list(batches), name="batch"), columns=columns)
    for batch, idx in batches.items():
        for name, values, two_sided in specs:
            if not np.isfinite(k[name]):
                continue
            x = values[idx]
            lower, upper, ok = _robust_bounds(x, k[name], floor=0.0 if two_sided else _MIN_PCT_SPREAD)
            if not ok:
                logger.warning("qc: log %s has zero MAD in batch %r; no %s outliers flagged there.", name, batch, name)
                continue
            if two_sided:
                reasons[f"low_{name}"][idx] = x < lower
                reasons[f"high_{name}"][idx] = x > upper
                table.loc[batch, [f"min_{name}", f"max_{name}"]] = [np.expm1(lower), np.expm1(upper)]
            else:
                reasons[f"high_{name}"][idx] = x > upper
                table.loc[batch, "max_pct_mt" if name == "mito" else "max_pct_hb"] = upper
        logger.debug("qc thresholds for batch %r: %s", batch, table.loc[batch].to_dict())
    return reasons, table


def _doublets(
    X: Any,
    batches: dict[str, np.ndarray],
    *,
    strict: bool,
    threshold: float | None,
    expected_doublet_rate: float,
    random_state: int,
    scrublet_kwargs: Mapping[str, Any] | None,
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Scrublet scores and calls per batch, on a float32 CSR copy of the counts."""
    import scanpy as sc

    n = X.shape[0]
    scores = np.full(n, np.nan)
    called = np.zeros(n, dtype=bool)
    used: dict[str, float] = {}
    kwargs = {"use_approx_neighbors": False} | dict(scrublet_kwargs or {})
    for key in ("threshold", "expected_doublet_rate", "random_state", "batch_key", "copy", "adata_sim"):
        if key in kwargs:
            raise ValueError(f"scrublet_kwargs may not set {key!r}; it is set by qc itself (or not supported).")
    for batch, idx in batches.items():
        counts = sp.csr_matrix(X[idx], dtype=np.float32)  # a copy: scrublet's normalisation never touches X
        n_cells, n_genes = counts.shape
        light = AnnData(
            counts,
            obs=pd.DataFrame(index=pd.Index(np.arange(n_cells).astype(str))),
            var=pd.DataFrame(index=pd.Index(np.arange(n_genes).astype(str))),
        )
        call = dict(kwargs)
        call.setdefault("n_prin_comps", max(1, min(30, n_cells - 1, n_genes - 1)))
        where = "all cells" if len(batches) == 1 else f"batch {batch!r}"
        try:
            if n_cells < _MIN_SCRUBLET_CELLS:
                raise ValueError(f"Scrublet needs at least {_MIN_SCRUBLET_CELLS} cells per batch")
            with warnings.catch_warnings():
                # low-quality cells may have no counts in scrublet's highly variable genes: expected, they are flagged
                warnings.filterwarnings("ignore", message="Some cells have zero counts", category=UserWarning)
                # threshold=0.0 is a placeholder: the calls are redone below, from the simulated scores
                sc.pp.scrublet(
                    light,
                    threshold=0.0 if threshold is None else threshold,
                    expected_doublet_rate=expected_doublet_rate,
                    random_state=random_state,
                    verbose=False,
                    **call,
                )
        except (ValueError, IndexError, ZeroDivisionError, np.linalg.LinAlgError) as err:
            msg = (
                f"Scrublet failed on {where} ({n_cells} cells x {n_genes} genes): {err}. Doublet detection needs "
                f"enough cells and expressed genes per batch."
            )
            if strict:
                raise ValueError(msg + " Pass doublets='auto' to skip it with a warning, or doublets=False.") from err
            logger.warning("%s Skipping doublet detection there (doublet_score NaN, no doublet calls).", msg)
            used[batch] = np.nan
            continue
        batch_scores = light.obs[DOUBLET_SCORE_KEY].to_numpy(dtype=np.float64)  # NaN where scrublet filtered
        thr = threshold
        if thr is None:
            thr = _bimodal_threshold(
                np.asarray(light.uns["scrublet"]["doublet_scores_sim"], dtype=np.float64),
                n_obs=int(np.isfinite(batch_scores).sum()),
                rate=expected_doublet_rate,
            )
        if thr is None:
            logger.warning(
                "qc: the simulated doublet scores of %s are not bimodal, so no threshold was found and no cell "
                "there is called a doublet; inspect doublet_score and pass doublet_threshold=.",
                where,
            )
            used[batch] = np.nan
            scores[idx] = batch_scores
            continue
        scores[idx] = batch_scores
        called[idx] = np.nan_to_num(batch_scores, nan=-np.inf) > thr
        used[batch] = float(thr)
    return scores, called, used


def _local_maxima(y: np.ndarray) -> np.ndarray:
    """Indices of the local maxima of ``y`` (edges included; a plateau counts once, at its start)."""
    step = np.diff(np.concatenate([[-np.inf], y, [-np.inf]]))
    moves = np.flatnonzero(step)
    signs = np.sign(step[moves])
    return moves[:-1][(signs[:-1] > 0) & (signs[1:] < 0)]


def _bimodal_threshold(
    sim_scores: np.ndarray, *, n_obs: int, rate: float, min_mass: float = 0.05, max_iter: int = 10_000
) -> float | None:
    """Scrublet score at the valley between the two modes of the simulated-doublet scores, or ``None``.

    A Scrublet score is a convex, increasing function of the fraction ``q`` of simulated cells among a cell's
    neighbours, and ``q`` takes equally spaced values. The histogram is therefore built on ``q`` (one bin per
    possible value; binning the scores directly leaves empty bins between the high levels, read as spurious modes),
    smoothed with a 3-bin running mean until at most two local maxima remain, and the valley between the two is
    mapped back to a score. The split counts as bimodal only if each side holds at least ``min_mass`` of the
    simulated doublets; otherwise smoothing continues, and a unimodal histogram gives ``None``.
    """
    sim = sim_scores[np.isfinite(sim_scores)]
    if sim.size < 2 or n_obs < 1 or sim.min() == sim.max():
        return None
    ratio = sim.size / n_obs  # simulated doublets per observed cell
    a, b = rate / ratio, 1.0 - rate - rate / ratio  # score = q a / (1 - rate - q b), solved for q below
    q = sim * (1.0 - rate) / (a + sim * b)
    step = float(np.min(np.diff(np.unique(np.round(q, 9)))))
    level = np.round(q / step).astype(np.int64)
    y = np.bincount(level - level.min()).astype(np.float64)
    total = y.sum()
    for _ in range(max_iter):
        peaks = _local_maxima(y)
        if len(peaks) < 2:
            return None
        if len(peaks) == 2:
            valley = int(peaks[0] + np.argmin(y[peaks[0] : peaks[1] + 1]))
            below = np.count_nonzero(level - level.min() <= valley) / total
            if min(below, 1.0 - below) >= min_mass:
                q_thr = (valley + level.min() + 0.5) * step
                return float(q_thr * a / (1.0 - rate - q_thr * b))
        padded = np.pad(y, 1, mode="edge")
        y = (padded[:-2] + padded[1:-1] + padded[2:]) / 3.0
    return None
