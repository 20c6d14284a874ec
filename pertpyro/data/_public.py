"""Loaders for larger public Perturb-seq screens, and the converter that brings an AnnData to the pertpyro contract.

The files come from the scPerturb collection on Zenodo (record 10044268; Peidli et al., Nat Methods 2024), which
harmonises each study into one ``.h5ad`` with raw counts in ``X``. They are downloaded once into the cache of
:func:`pertpyro.data._download.fetch` and then read from disk.

Checksums: the ``sha256`` entries of :data:`SOURCES` are ``None`` because the files could not be downloaded when
this table was written, so nothing is verified by default. The first download logs a warning with the computed
digest and records it in a ``<file>.sha256`` sidecar; later loads check the cached file against that sidecar. Pass
``sha256=`` to a loader to pin a digest you trust.
"""

from __future__ import annotations

import logging
import math
import os
import re
import warnings
from collections.abc import Callable, Sequence
from copy import deepcopy
from typing import Literal, NamedTuple

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from pertpyro.data._download import fetch, read_sidecar

logger = logging.getLogger(__name__)

CONTROL = "control"
"""Label of control cells in the pertpyro contract."""

PERTURBATION_KEY = "perturbation"
"""``obs`` column written by :func:`to_contract`."""

PROVENANCE_KEY = "provenance"
"""``uns`` entry where the public loaders record where the data came from."""

_COMBINATION = "+"
_MAX_EXACT_FLOAT32 = 2**24  # integers above this are not exactly representable in float32
_CHECK_CHUNK = 1 << 24  # values checked per chunk, bounds temporary memory


class Source(NamedTuple):
    """One public source file.

    Parameters
    ----------
    url
        Download address.
    sha256
        Pinned SHA-256 hex digest, or ``None`` when not pinned (nothing is verified; see the module docstring).
    description
        What the file contains.
    citation
        Study to cite (and the collection that harmonised it).
    licence
        Licence of the file as distributed.
    """

    url: str
    sha256: str | None
    description: str
    citation: str
    licence: str


_ZENODO = "https://zenodo.org/records/10044268/files"
_SCPERTURB = (
    "Peidli S, Green TD, Shen C, et al. scPerturb: harmonized single-cell perturbation data. "
    "Nat Methods 21, 531-540 (2024). doi:10.1038/s41592-023-02144-y"
)
_LICENCE = "CC BY 4.0 (scPerturb Zenodo record 10044268; check the record and the original study for terms)"
_REPLOGLE = (
    "Replogle JM, Saunders RA, Pogson AN, et al. Mapping information-rich genotype-phenotype landscapes with "
    "genome-scale Perturb-seq. Cell 185, 2559-2575 (2022). doi:10.1016/j.cell.2022.05.013"
)

SOURCES: dict[str, Source] = {
    "norman2019": Source(
        url=f"{_ZENODO}/NormanWeissman2019_filtered.h5ad?download=1",
        sha256=None,
        description=(
            "K562 CRISPR activation (CRISPRa) Perturb-seq with single and paired gene activations; "
            "scPerturb 'filtered' file, raw UMI counts."
        ),
        citation=(
            "Norman TM, Horlbeck MA, Replogle JM, et al. Exploring genetic interaction manifolds constructed from "
            f"rich single-cell phenotypes. Science 365, 786-793 (2019). doi:10.1126/science.aax4438. Via {_SCPERTURB}"
        ),
        licence=_LICENCE,
    ),
    "replogle2022_k562_essential": Source(
        url=f"{_ZENODO}/ReplogleWeissman2022_K562_essential.h5ad?download=1",
        sha256=None,
        description="K562 CRISPR interference (CRISPRi) Perturb-seq of common essential genes; raw UMI counts.",
        citation=f"{_REPLOGLE}. Via {_SCPERTURB}",
        licence=_LICENCE,
    ),
    "replogle2022_rpe1": Source(
        url=f"{_ZENODO}/ReplogleWeissman2022_rpe1.h5ad?download=1",
        sha256=None,
        description="hTERT-RPE1 CRISPRi Perturb-seq of common essential genes; raw UMI counts.",
        citation=f"{_REPLOGLE}. Via {_SCPERTURB}",
        licence=_LICENCE,
    ),
    "replogle2022_k562_gwps": Source(
        url=f"{_ZENODO}/ReplogleWeissman2022_K562_gwps.h5ad?download=1",
        sha256=None,
        description=(
            "K562 genome-wide CRISPRi Perturb-seq (all expressed genes); raw UMI counts. Very large: the download "
            "and the in-memory matrix each need many GB."
        ),
        citation=f"{_REPLOGLE}. Via {_SCPERTURB}",
        licence=_LICENCE,
    ),
    "adamson2016": Source(
        url=f"{_ZENODO}/AdamsonWeissman2016_GSM2406681_10X010.h5ad?download=1",
        sha256=None,
        description=(
            "K562 CRISPRi Perturb-seq, unfolded-protein-response epistasis experiment (GSM2406681, 10X010): "
            "single, double and triple knockdowns of ATF6, PERK (EIF2AK3) and IRE1 (ERN1); raw UMI counts."
        ),
        citation=(
            "Adamson B, Norman TM, Jost M, et al. A multiplexed single-cell CRISPR screening platform enables "
            "systematic dissection of the unfolded protein response. Cell 167, 1867-1882 (2016). "
            f"doi:10.1016/j.cell.2016.11.048. Via {_SCPERTURB}"
        ),
        licence=_LICENCE,
    ),
}
"""Public source files by dataset name: ``Source(url, sha256, description, citation, licence)``."""

REPLOGLE2022_KINDS: tuple[str, ...] = ("k562_essential", "rpe1", "k562_gwps")
"""Valid ``kind`` values of :func:`replogle2022`."""

# Columns that commonly hold gene symbols in var, in order of preference.
_SYMBOL_COLUMNS = ("gene_symbol", "gene_symbols", "gene_name", "gene_names", "symbol", "feature_name")


def to_contract(
    adata: AnnData,
    *,
    perturbation_key: str,
    control_labels: str | Sequence[str],
    combination_separator: str | None,
    gene_symbol_key: str | None = None,
    layer: str | None = None,
    label_map: Callable[[str], str | None] | None = None,
    on_missing: Literal["raise", "drop"] = "raise",
    original_key: str = "perturbation_original",
    copy: bool = True,
) -> AnnData:
    """Convert a screen to the pertpyro AnnData contract.

    The output has raw counts as a CSR ``float32`` matrix in ``X`` and one label per cell in
    ``obs["perturbation"]`` (categorical, ``"control"`` first): control cells are ``"control"``, a single target is
    its name, and a combination is its targets sorted and joined by ``"+"``. Control parts inside a combination
    are dropped, so GEARS-style ``"A+ctrl"`` and ``"ctrl+A"`` become ``"A"``, and scPerturb-style ``"CNN1_CBL"``
    becomes ``"CBL+CNN1"``. ``var_names`` become unique gene symbols.

    Parameters
    ----------
    adata
        Screen to convert; it is not modified.
    perturbation_key
        ``obs`` column with the source label of each cell. It is kept, renamed to ``original_key``.
    control_labels
        Source label(s) of control cells, e.g. ``"control"`` (scPerturb), ``"ctrl"`` (GEARS) or
        ``"non-targeting"``.
    combination_separator
        Separator of targets in a source combination label (``"_"`` for scPerturb, ``"+"`` for GEARS), or ``None``
        when every label is a single target.
    gene_symbol_key
        ``var`` column with gene symbols to use as ``var_names``; ``None`` keeps the current ``var_names``. Missing
        symbols fall back to the current name. Duplicates get suffixes ``-1``, ``-2``, ...; when any name changes,
        the previous names are kept in ``var["original_var_name"]``.
    layer
        Layer holding the raw counts; ``None`` uses ``X``. When given, the layer becomes ``X`` and the previous
        ``X`` is dropped.
    label_map
        Optional function applied to each source label (as a stripped string) before parsing; it returns the
        label to parse, or ``None`` to mark the cell as unlabelled. Used for study-specific label formats.
    on_missing
        What to do with cells whose label is missing (NaN, empty, or ``None`` from ``label_map``): ``"raise"`` a
        ``ValueError``, or ``"drop"`` them with a logged warning.
    original_key
        Name of the ``obs`` column that keeps the source labels.
    copy
        Copy every array of ``adata`` that is kept. With ``False`` the output may share ``obsm``, ``varm``,
        ``layers`` and (when already CSR ``float32``) ``X`` with the input, which saves memory when the input is
        discarded (as the public loaders do).

    Returns
    -------
    A new AnnData following the contract, with every other ``obs`` and ``var`` column, ``uns``, ``obsm``,
    ``varm``, ``obsp``, ``varp`` and the other layers kept.

    Raises
    ------
    ValueError
        If the counts are not raw integer counts (non-integer, negative, NaN/inf, or empty), if a key is missing,
        if labels are missing and ``on_missing="raise"``, or if a target name is empty or contains ``"+"``.
    """
    if perturbation_key not in adata.obs.columns:
        raise ValueError(
            f"obs has no column {perturbation_key!r} (perturbation_key); available: {list(adata.obs.columns)}."
        )
    if on_missing not in ("raise", "drop"):
        raise ValueError(f"on_missing must be 'raise' or 'drop', got {on_missing!r}.")
    if combination_separator == "":
        raise ValueError("combination_separator must be a non-empty string or None.")
    controls = _as_label_set(control_labels)
    if original_key in adata.obs.columns and original_key != perturbation_key:
        raise ValueError(f"obs already has a column {original_key!r}; pass another original_key=.")
    if perturbation_key != PERTURBATION_KEY and PERTURBATION_KEY in adata.obs.columns:
        raise ValueError(
            f"obs already has a column {PERTURBATION_KEY!r} besides perturbation_key={perturbation_key!r}; "
            "rename or drop it first."
        )
    if layer is not None and layer not in adata.layers:
        raise ValueError(f"layers has no {layer!r}; available: {list(adata.layers.keys())}.")

    # --- labels: parse each distinct source label once ---
    codes, uniques = pd.factorize(adata.obs[perturbation_key].astype(object), use_na_sentinel=True)
    parsed = [_parse_label(u, controls, combination_separator, label_map) for u in uniques]
    labelled_codes = np.array([p is not None for p in parsed] + [False])  # index -1 -> NaN sentinel -> False
    keep = labelled_codes[codes]
    n_missing = int((~keep).sum())
    if n_missing:
        bad = sorted(
            {str(u) for u, p in zip(uniques, parsed, strict=True) if p is None} | ({"NaN"} if -1 in codes else set())
        )
        if on_missing == "raise":
            raise ValueError(
                f"{n_missing} cells have no usable perturbation label in obs[{perturbation_key!r}] "
                f"(labels {bad[:10]}); pass on_missing='drop' to remove them."
            )
        logger.warning("Dropping %d cells without a usable perturbation label (labels %s).", n_missing, bad[:10])
    all_kept = n_missing == 0
    labels = np.array([p if p is not None else "" for p in parsed] + [""], dtype=object)[codes]
    if not all_kept:
        labels = labels[keep]
    targets = sorted({lab for lab in labels if lab != CONTROL})
    categories = ([CONTROL] if CONTROL in set(labels) else []) + targets
    if CONTROL not in categories:
        logger.warning(
            "No control cells: none of the labels %s was found in obs[%r].", sorted(controls), perturbation_key
        )

    # --- counts ---
    source = adata.layers[layer] if layer is not None else adata.X
    where = f"layers[{layer!r}]" if layer is not None else "X"
    if source is None:
        raise ValueError("adata.X is empty (None); raw counts are required (pass layer= if they are in a layer).")
    counts = _to_csr(source, where=where)
    if not all_kept:
        counts = counts[keep]
    _check_raw_counts(counts, where=where)
    x = counts.astype(np.float32, copy=copy and counts is source)

    # --- obs ---
    obs = adata.obs if all_kept else adata.obs.loc[keep]
    obs = obs.rename(columns={perturbation_key: original_key})  # always a new frame
    if not all_kept:
        for col in obs.columns:
            if isinstance(obs[col].dtype, pd.CategoricalDtype):
                obs[col] = obs[col].cat.remove_unused_categories()
    obs[PERTURBATION_KEY] = pd.Categorical(labels, categories=categories)

    # --- var ---
    var = adata.var.copy()
    old_names = [str(n) for n in adata.var_names]
    if gene_symbol_key is not None:
        if gene_symbol_key not in var.columns:
            raise ValueError(
                f"var has no column {gene_symbol_key!r} (gene_symbol_key); available: {list(var.columns)}."
            )
        names = [_symbol_or(s, old) for s, old in zip(var[gene_symbol_key].astype(object), old_names, strict=True)]
    else:
        names = list(old_names)
    new_names = _make_unique(names)
    if new_names != old_names:
        n_dup = sum(a != b for a, b in zip(names, new_names, strict=True))
        if n_dup:
            logger.info("Made %d duplicated gene names unique with '-<n>' suffixes.", n_dup)
        if "original_var_name" not in var.columns:
            var["original_var_name"] = old_names
    var.index = pd.Index(new_names, dtype=object)
    var.index.name = None
    obs.index = pd.Index([str(i) for i in obs.index], dtype=object)
    obs.index.name = None

    # --- assemble ---
    out = AnnData(
        X=x,
        obs=obs,
        var=var,
        uns=deepcopy(dict(adata.uns)) if copy else dict(adata.uns),
        obsm={k: _subset_rows(v, keep, all_kept, copy=copy) for k, v in adata.obsm.items()},
        varm={k: (v.copy() if copy else v) for k, v in adata.varm.items()},
        obsp={k: _subset_square(v, keep, all_kept, copy=copy) for k, v in adata.obsp.items()},
        varp={k: (v.copy() if copy else v) for k, v in adata.varp.items()},
        layers={k: _subset_rows(v, keep, all_kept, copy=copy) for k, v in adata.layers.items() if k != layer},
    )
    logger.info(
        "Converted %d cells x %d genes: %d control cells, %d perturbation labels.",
        out.n_obs,
        out.n_vars,
        int((labels == CONTROL).sum()),
        len(targets),
    )
    return out


def norman2019(
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    sha256: str | None = None,
) -> AnnData:
    """Norman et al. (2019) CRISPRa screen of single and paired gene activations in K562 cells.

    Downloads ``NormanWeissman2019_filtered.h5ad`` from the scPerturb Zenodo record (once; then read from the
    cache) and converts it with :func:`to_contract`: scPerturb's ``"control"`` stays ``"control"`` and combinations
    such as ``"CBL_CNN1"`` become ``"CBL+CNN1"``.

    No checksum is pinned in :data:`SOURCES` (the file could not be fetched when the table was written): unless
    you pass ``sha256=``, the file is not verified; a warning with its digest is logged and the digest is stored
    in the cached file's ``.sha256`` sidecar, against which later loads are checked.

    Parameters
    ----------
    cache_dir
        Cache directory; default ``$PERTPYRO_DATA_DIR`` or ``~/.cache/pertpyro``. A file placed there manually
        under the source file name is used without network access.
    progress
        Show a download progress bar.
    sha256
        SHA-256 digest to verify the file against (overrides :data:`SOURCES`).

    Returns
    -------
    AnnData with raw counts (CSR ``float32``) in ``X``, ``obs["perturbation"]`` per the contract, the source label
    in ``obs["perturbation_original"]``, the other scPerturb columns, and ``uns["provenance"]`` (URL, sha256,
    citation, licence).
    """
    return _load(
        "norman2019",
        cache_dir=cache_dir,
        progress=progress,
        sha256=sha256,
        control_labels=("control", "ctrl", "non-targeting"),
        combination_separator="_",
    )


def replogle2022(
    kind: Literal["k562_essential", "rpe1", "k562_gwps"] = "k562_essential",
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    sha256: str | None = None,
) -> AnnData:
    """Replogle et al. (2022) CRISPRi Perturb-seq screens.

    Downloads the scPerturb file of the chosen screen (once; then read from the cache) and converts it with
    :func:`to_contract`. Every label is a single target gene; ``"control"`` and ``"non-targeting"`` are control
    cells, and cells without a label are dropped with a warning.

    No checksum is pinned in :data:`SOURCES` (the files could not be fetched when the table was written): unless
    you pass ``sha256=``, the file is not verified; a warning with its digest is logged and the digest is stored
    in the cached file's ``.sha256`` sidecar, against which later loads are checked.

    Parameters
    ----------
    kind
        ``"k562_essential"`` (essential genes, K562), ``"rpe1"`` (essential genes, hTERT-RPE1) or ``"k562_gwps"``
        (genome-wide, K562; very large, needs many GB of disk and memory).
    cache_dir
        Cache directory; default ``$PERTPYRO_DATA_DIR`` or ``~/.cache/pertpyro``. A file placed there manually
        under the source file name is used without network access.
    progress
        Show a download progress bar.
    sha256
        SHA-256 digest to verify the file against (overrides :data:`SOURCES`).

    Returns
    -------
    AnnData following the contract (see :func:`norman2019`), with ``uns["provenance"]``.
    """
    if kind not in REPLOGLE2022_KINDS:
        raise ValueError(f"Unknown Replogle 2022 kind {kind!r}; choose one of {list(REPLOGLE2022_KINDS)}.")
    return _load(
        f"replogle2022_{kind}",
        cache_dir=cache_dir,
        progress=progress,
        sha256=sha256,
        control_labels=("control", "non-targeting"),
        combination_separator=None,
    )


def adamson2016(
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    sha256: str | None = None,
) -> AnnData:
    """Adamson et al. (2016) unfolded-protein-response epistasis screen (CRISPRi, K562; GSM2406681, 10X010).

    Downloads ``AdamsonWeissman2016_GSM2406681_10X010.h5ad`` from the scPerturb Zenodo record (once; then read
    from the cache) and converts it with :func:`to_contract`. scPerturb keeps this study's guide-construct names
    as labels, so they are parsed first: the plasmid suffix is removed (``"SPI1_pDS255"`` -> ``"SPI1"``), the
    negative-control constructs ``"3x_neg_ctrl"``, ``"62(mod)"``, ``"63(mod)"`` and ``"Gal4-4(mod)"`` become
    ``"control"``, multi-gene constructs become combinations (``"ATF6_PERK_IRE1_pMJ158"`` ->
    ``"ATF6+EIF2AK3+ERN1"``; ``"only"`` is dropped), and the pathway names PERK and IRE1 are mapped to the measured
    gene symbols EIF2AK3 and ERN1. Cells without an assigned guide (``"*"`` or missing) are dropped with a warning.
    The construct-name rules were written from published descriptions of the file, not checked against it.

    No checksum is pinned in :data:`SOURCES` (the file could not be fetched when the table was written): unless
    you pass ``sha256=``, the file is not verified; a warning with its digest is logged and the digest is stored
    in the cached file's ``.sha256`` sidecar, against which later loads are checked.

    Parameters
    ----------
    cache_dir
        Cache directory; default ``$PERTPYRO_DATA_DIR`` or ``~/.cache/pertpyro``. A file placed there manually
        under the source file name is used without network access.
    progress
        Show a download progress bar.
    sha256
        SHA-256 digest to verify the file against (overrides :data:`SOURCES`).

    Returns
    -------
    AnnData following the contract (see :func:`norman2019`), with ``uns["provenance"]``.
    """
    return _load(
        "adamson2016",
        cache_dir=cache_dir,
        progress=progress,
        sha256=sha256,
        control_labels=(CONTROL,),
        combination_separator=_COMBINATION,
        label_map=adamson_label,
    )


_ADAMSON_PLASMID = re.compile(r"^p[A-Z]{2,3}\d+(?:-\d+)?$")
_ADAMSON_CONTROLS = frozenset({"3x_neg_ctrl", "62(mod)", "63(mod)", "Gal4-4(mod)", "non-targeting", "control", "ctrl"})
_ADAMSON_ALIASES = {"PERK": "EIF2AK3", "IRE1": "ERN1", "IRE1A": "ERN1"}


def adamson_label(raw: str) -> str | None:
    """Parse an Adamson et al. (2016) guide-construct name into a contract label.

    Parameters
    ----------
    raw
        Construct name as stored by scPerturb, e.g. ``"ATF6_PERK_IRE1_pMJ158"``, ``"3x_neg_ctrl_pMJ144-1"``.

    Returns
    -------
    ``"control"``, targets joined by ``"+"`` (``"ATF6+EIF2AK3+ERN1"``), or ``None`` for unassigned cells (``"*"``).
    """
    text = raw.strip()
    if text in ("", "*"):
        return None
    tokens = text.split("_")
    while len(tokens) > 1 and _ADAMSON_PLASMID.match(tokens[-1]):
        tokens.pop()
    if "_".join(tokens) in _ADAMSON_CONTROLS:
        return CONTROL
    genes = [_ADAMSON_ALIASES.get(t.upper(), t) for t in tokens if t and t.lower() != "only"]
    return _COMBINATION.join(genes) if genes else None


def _load(
    name: str,
    *,
    cache_dir: str | os.PathLike[str] | None,
    progress: bool,
    sha256: str | None,
    control_labels: Sequence[str],
    combination_separator: str | None,
    label_map: Callable[[str], str | None] | None = None,
) -> AnnData:
    source = SOURCES[name]
    pinned = sha256 if sha256 is not None else source.sha256
    path = fetch(source.url, sha256=pinned, cache_dir=cache_dir, progress=progress)
    logger.info("Reading %s", path)
    with warnings.catch_warnings():
        # duplicated gene symbols are made unique by to_contract below
        warnings.filterwarnings("ignore", message=r"Variable names are not unique", category=UserWarning)
        raw = anndata.read_h5ad(path)
    symbol_key = next((c for c in _SYMBOL_COLUMNS if c in raw.var.columns), None)
    adata = to_contract(
        raw,
        perturbation_key=PERTURBATION_KEY,
        control_labels=control_labels,
        combination_separator=combination_separator,
        gene_symbol_key=symbol_key,
        label_map=label_map,
        on_missing="drop",
        copy=False,
    )
    del raw
    digest = read_sidecar(path)
    adata.uns[PROVENANCE_KEY] = {
        "dataset": name,
        "url": source.url,
        "file": path.name,
        "sha256": digest if digest is not None else "",
        "sha256_pinned": pinned is not None,
        "description": source.description,
        "citation": source.citation,
        "licence": source.licence,
        "perturbation_label": (
            f"obs['{PERTURBATION_KEY}'] converted by pertpyro.data.to_contract from the source column "
            f"obs['perturbation'] (kept as obs['perturbation_original'])"
        ),
    }
    return adata


def _parse_label(
    value: object,
    controls: frozenset[str],
    separator: str | None,
    label_map: Callable[[str], str | None] | None,
) -> str | None:
    """Contract label of one source label, or ``None`` when the label is missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text: str | None = str(value).strip()
    if label_map is not None:
        text = label_map(text)
        text = text.strip() if text is not None else None
    if not text:
        return None
    if text in controls:
        return CONTROL
    parts = [text] if separator is None else [p.strip() for p in text.split(separator)]
    if any(not p for p in parts):
        raise ValueError(f"Perturbation label {value!r} has an empty target (separator {separator!r}).")
    targets = sorted({p for p in parts if p not in controls})
    if not targets:
        return CONTROL
    for target in targets:
        if _COMBINATION in target:
            raise ValueError(
                f"Target {target!r} in label {value!r} contains {_COMBINATION!r}, which the contract reserves for "
                "combinations; set combination_separator accordingly."
            )
        if target == CONTROL:
            raise ValueError(
                f"Label {value!r} contains {CONTROL!r} but it is not among control_labels {sorted(controls)}; "
                "add it to control_labels if these are control cells."
            )
    return _COMBINATION.join(targets)


def _as_label_set(labels: str | Sequence[str]) -> frozenset[str]:
    items = [labels] if isinstance(labels, str) else list(labels)
    out = frozenset(str(x).strip() for x in items)
    if not out or "" in out:
        raise ValueError(f"control_labels must be one or more non-empty labels, got {labels!r}.")
    return out


def _to_csr(counts: object, *, where: str) -> sp.csr_matrix:
    """CSR view (sparse input in CSR format is returned as is) or CSR copy of a count matrix."""
    if sp.issparse(counts):
        return counts if counts.format == "csr" else sp.csr_matrix(counts)
    arr = np.asarray(counts)
    if arr.ndim != 2:
        raise ValueError(f"{where} must be a 2-d cells x genes matrix, got shape {arr.shape}.")
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{where} must be numeric raw counts, got dtype {arr.dtype}.")
    return sp.csr_matrix(arr)


def _check_raw_counts(counts: sp.csr_matrix, *, where: str) -> None:
    """Raise a ``ValueError`` naming the problem unless ``counts`` holds raw, non-negative integer counts."""
    if counts.shape[0] == 0 or counts.shape[1] == 0:
        raise ValueError(f"{where} is empty (shape {counts.shape}); a non-empty cells x genes matrix is required.")
    values = counts.data
    kind = values.dtype.kind
    if kind not in "biuf":
        raise ValueError(f"{where} must be numeric raw counts, got dtype {values.dtype}.")
    if kind == "b" or values.size == 0:
        return
    for start in range(0, values.size, _CHECK_CHUNK):
        chunk = values[start : start + _CHECK_CHUNK]
        if kind == "f" and not np.isfinite(chunk).all():
            raise ValueError(f"{where} contains NaN or infinite values; raw UMI counts are required.")
        low = chunk.min()
        if low < 0:
            raise ValueError(f"{where} contains negative values (minimum {low}); raw UMI counts are required.")
        if kind == "f":
            frac = chunk != np.round(chunk)
            if frac.any():
                example = chunk[np.argmax(frac)]
                raise ValueError(
                    f"{where} contains non-integer values (e.g. {example:g}); raw integer UMI counts are required, "
                    "and these look normalised or log-transformed. If raw counts are stored in a layer, pass layer=."
                )
        high = chunk.max()
        if high > _MAX_EXACT_FLOAT32:
            raise ValueError(f"{where} has counts up to {high}, above 2**24, which float32 cannot store exactly.")


def _symbol_or(symbol: object, fallback: str) -> str:
    if symbol is None or (isinstance(symbol, float) and math.isnan(symbol)):
        return fallback
    text = str(symbol).strip()
    return text or fallback


def _make_unique(names: Sequence[str]) -> list[str]:
    """Keep the first occurrence of each name; later ones get the first free suffix ``-1``, ``-2``, ..."""
    taken = set(names)
    seen: set[str] = set()
    out = []
    for name in names:
        if name not in seen:
            seen.add(name)
            out.append(name)
            continue
        i = 1
        while f"{name}-{i}" in taken:
            i += 1
        new = f"{name}-{i}"
        taken.add(new)
        seen.add(new)
        out.append(new)
    return out


def _subset_rows(m: object, keep: np.ndarray, all_kept: bool, *, copy: bool) -> object:
    if all_kept:
        return m.copy() if copy else m
    if isinstance(m, pd.DataFrame):
        return m.loc[keep].copy()
    return m[np.flatnonzero(keep)]


def _subset_square(m: object, keep: np.ndarray, all_kept: bool, *, copy: bool) -> object:
    if all_kept:
        return m.copy() if copy else m
    idx = np.flatnonzero(keep)
    return m[idx][:, idx]
