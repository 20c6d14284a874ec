"""Validate a screen's AnnData against the data contract and register it for pertpyro models.

:func:`setup_anndata` is the single entry point: it checks the raw counts, the perturbation labels and the optional
batch column, and writes a :class:`~pertpyro.data._registry.Registry` to ``adata.uns["pertpyro"]``. Nothing else in
the user's AnnData is touched. Every rejection is a :class:`ValueError` whose message names the problem and the fix.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from pertpyro._keys import REGISTRY_KEY
from pertpyro.data._registry import Registry

logger = logging.getLogger(__name__)

_CHUNK_ROWS = 10_000
"""Rows of a dense (or backed) matrix checked at a time, so a large matrix is never copied whole."""

_CHUNK_VALUES = 1 << 24
"""Stored values of a sparse matrix checked at a time (bounds the size of temporary arrays)."""

_N_SHOWN = 5
"""How many offending names or labels an error message lists."""


def _preview(items: list[Any], n: int = _N_SHOWN) -> str:
    shown = ", ".join(repr(x) for x in items[:n])
    return shown + (f", ... ({len(items)} in total)" if len(items) > n else "")


def _check_dtype(dtype: np.dtype, *, name: str) -> None:
    if dtype == np.bool_ or not np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.complexfloating):
        raise ValueError(
            f"{name} has dtype {dtype}, which cannot hold UMI counts; pass raw counts as an integer or float matrix."
        )


def _check_values(values: np.ndarray, *, name: str, row_of: Callable[[int], int]) -> None:
    """Check a block of stored values: numeric, finite, non-negative, integer.

    ``row_of(i)`` maps position ``i`` of the flattened (C order) block to its cell (row) index in the whole matrix,
    which the error message reports.
    """
    _check_dtype(values.dtype, name=name)
    flat = values.reshape(-1)
    if flat.size == 0:
        return
    checks = []
    if np.issubdtype(flat.dtype, np.floating):
        checks.append(
            (
                lambda x: ~np.isfinite(x),
                "NaN or infinite value(s)",
                "raw UMI counts are finite. Pass the unprocessed count matrix, or remove the affected cells/genes.",
            )
        )
    if not np.issubdtype(flat.dtype, np.unsignedinteger):
        checks.append(
            (
                lambda x: x < 0,
                "negative value(s)",
                "it looks scaled or centred (e.g. by scanpy.pp.scale). Pass raw UMI counts, "
                'e.g. setup_anndata(adata, layer="counts").',
            )
        )
    if np.issubdtype(flat.dtype, np.floating):
        checks.append(
            (
                lambda x: x != np.floor(x),
                "non-integer value(s)",
                "it looks normalised or log-transformed. pertpyro models raw UMI counts; pass raw UMI counts, "
                'e.g. setup_anndata(adata, layer="counts") if they are kept in a layer.',
            )
        )
    for is_bad, what, fix in checks:
        bad = is_bad(flat)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"{name} contains at least {int(bad.sum())} {what} (e.g. {flat[i]} in cell row {row_of(i)}); {fix}"
            )


def _check_sparse(matrix: sp.spmatrix | sp.sparray, *, name: str, row_offset: int = 0) -> np.ndarray:
    """Check the stored values of an in-memory sparse matrix without densifying it; return per-cell totals."""
    if matrix.format not in ("csr", "csc", "coo"):
        # bsr/lil/dok/dia: anndata itself only stores csr/csc, so this copy is rare.
        matrix = matrix.tocsr()
    data = matrix.data
    if matrix.format == "csr":
        indptr = matrix.indptr

        def row_of(i: int) -> int:
            return row_offset + int(np.searchsorted(indptr, i, side="right") - 1)

    else:
        rows = matrix.indices if matrix.format == "csc" else matrix.row

        def row_of(i: int) -> int:
            return row_offset + int(rows[i])

    _check_dtype(data.dtype, name=name)
    for start in range(0, data.size, _CHUNK_VALUES):
        _check_values(
            data[start : start + _CHUNK_VALUES],  # a view: no copy
            name=name,
            row_of=lambda i, start=start: row_of(start + i),
        )
    return np.asarray(matrix.sum(axis=1, dtype=np.float64)).reshape(-1)


def _check_rows(matrix: Any, *, name: str, n_rows: int) -> np.ndarray:
    """Check a dense array or any row-sliceable matrix (h5py, backed sparse, dask) in row chunks; return totals."""
    totals = np.empty(n_rows, dtype=np.float64)
    for start in range(0, n_rows, _CHUNK_ROWS):
        stop = min(start + _CHUNK_ROWS, n_rows)
        block = matrix[start:stop]  # a view for in-memory arrays, a chunked read for backed ones
        if sp.issparse(block):
            totals[start:stop] = _check_sparse(block, name=name, row_offset=start)
            continue
        block = np.asarray(block)
        n_cols = block.shape[1]
        _check_values(block, name=name, row_of=lambda i, start=start, n_cols=n_cols: start + i // n_cols)
        totals[start:stop] = block.sum(axis=1, dtype=np.float64)
    return totals


def validate_counts(matrix: Any, *, name: str) -> None:
    """Check that a cells x genes matrix holds raw UMI counts.

    The check never densifies a sparse matrix (it reads the stored ``.data`` of CSR/CSC/COO) and reads dense or backed
    (h5py, backed sparse) matrices in chunks of rows, so a large matrix is never copied whole.

    Parameters
    ----------
    matrix
        Cells x genes counts: a NumPy array, a SciPy sparse matrix/array, or a row-sliceable backed matrix.
    name
        How to call the matrix in error messages, e.g. ``"adata.X"`` or ``"adata.layers['counts']"``.

    Raises
    ------
    ValueError
        If the matrix is missing or empty (0 cells or 0 genes), is not numeric, contains NaN/inf, negative or
        non-integer values, or has cells whose total count is zero.
    """
    if matrix is None:
        raise ValueError(f"{name} is None: there is no count matrix. Store raw UMI counts in X or name a layer.")
    shape = getattr(matrix, "shape", None)
    if shape is None or len(shape) != 2:
        raise ValueError(f"{name} must be a 2-D cells x genes matrix, got {type(matrix).__name__} of shape {shape}.")
    n_cells, n_genes = int(shape[0]), int(shape[1])
    if n_cells == 0 or n_genes == 0:
        raise ValueError(
            f"{name} is empty ({n_cells} cells x {n_genes} genes); pertpyro needs at least one cell and one gene. "
            "Check the filtering steps that produced this AnnData."
        )
    if sp.issparse(matrix):
        totals = _check_sparse(matrix, name=name)
    else:
        totals = _check_rows(matrix, name=name, n_rows=n_cells)
    empty = np.flatnonzero(totals == 0)
    if empty.size:
        raise ValueError(
            f"{name} has {empty.size} cell(s) with zero total counts (rows {_preview(empty.tolist())}); the "
            "negative-binomial likelihood is degenerate at library size 0. Filter them out first, e.g. "
            "scanpy.pp.filter_cells(adata, min_counts=1) when X holds the counts."
        )


def _count_matrix(adata: AnnData, layer: str | None) -> tuple[Any, str]:
    if layer is None:
        return adata.X, "adata.X"
    if layer not in adata.layers:
        available = list(adata.layers.keys())
        hint = f"available layers: {available}. Pass one of them" if available else "this AnnData has no layers. Pass"
        raise ValueError(f"adata.layers has no layer {layer!r}; {hint}, or layer=None to use adata.X.")
    return adata.layers[layer], f"adata.layers[{layer!r}]"


def _check_unique_names(index: pd.Index, *, what: str, fix: str) -> None:
    dup = index[index.duplicated()].unique().tolist()
    if dup:
        raise ValueError(
            f"adata.{what} has {len(dup)} duplicated name(s): {_preview(dup)}. Make them unique, e.g. {fix}."
        )


def _obs_column(adata: AnnData, key: str, *, role: str, argument: str) -> pd.Series:
    if key not in adata.obs.columns:
        raise ValueError(
            f"adata.obs has no {role} column {key!r}; available obs columns: {_preview(list(adata.obs.columns), 20)}. "
            f"Pass the right column as {argument}=..."
        )
    column = adata.obs[key]
    n_missing = int(column.isna().sum())
    if n_missing:
        raise ValueError(
            f"adata.obs[{key!r}] has {n_missing} missing (NaN) value(s); every cell needs a {role} label. Fill them "
            f"in or drop those cells, e.g. adata = adata[adata.obs[{key!r}].notna()].copy()."
        )
    return column


def _observed_counts(column: pd.Series) -> pd.Series:
    """Cells per observed value, keyed by the value as a string, most frequent first (unused categories dropped)."""
    counts = column.value_counts(sort=True)
    counts = counts[counts > 0]
    # Plain string index (not categorical); values that print alike (1 and "1") are merged, as the models see strings.
    counts = pd.Series(counts.to_numpy(), index=pd.Index([str(v) for v in counts.index], dtype=object))
    return counts.groupby(level=0, sort=False).sum().sort_values(ascending=False, kind="stable")


def _register_targets(column: pd.Series, *, key: str, control: str, delimiter: str) -> tuple[str, ...]:
    label_counts = _observed_counts(column)
    if control not in label_counts.index:
        frequent = ", ".join(f"{label!r} ({n} cells)" for label, n in label_counts.head(_N_SHOWN).items())
        raise ValueError(
            f"No cell in adata.obs[{key!r}] has the control label {control!r}. Most frequent labels: {frequent}. "
            'Pass the label of your control cells, e.g. control="non-targeting".'
        )
    splitter = Registry(perturbation_key=key, control=control, delimiter=delimiter, targets=(), genes=())
    targets: set[str] = set()
    for label, n in label_counts.items():
        try:
            targets.update(splitter.split_label(label))
        except ValueError as err:
            raise ValueError(f"adata.obs[{key!r}] ({n} cells): {err} Relabel these cells.") from err
    if not targets:
        logger.warning("adata.obs[%r] holds only control cells (%r): there is no perturbation to model.", key, control)
    _warn_unsplit_combinations(targets, key=key, delimiter=delimiter)
    return tuple(sorted(targets))


def _register_guides(guides: pd.Series, labels: pd.Series, *, key: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Sorted guide names and the one perturbation label of each; a guide seen with two labels is an error."""
    pairs = pd.DataFrame({"guide": guides.astype(str).to_numpy(), "label": labels.astype(str).to_numpy()})
    per_guide = pairs.drop_duplicates().groupby("guide", sort=True)["label"]
    n_labels = per_guide.nunique()
    ambiguous = n_labels[n_labels > 1]
    if len(ambiguous):
        guide = str(ambiguous.index[0])
        seen = sorted(pairs.loc[pairs["guide"] == guide, "label"].unique())
        raise ValueError(
            f"adata.obs[{key!r}]: guide {guide!r} is on cells of {len(seen)} perturbation labels ({', '.join(seen)}); "
            f"{len(ambiguous)} guide(s) break the rule that a guide belongs to one label. Check the guide assignment."
        )
    first = per_guide.first()
    return tuple(str(g) for g in first.index), tuple(str(label) for label in first.to_numpy())


_OTHER_SEPARATORS = ("_", ",", ";", "|", ":", "/", " ")
"""Separators of combination labels in other tools; a target written with one of them is probably a combination."""


def _warn_unsplit_combinations(targets: set[str], *, key: str, delimiter: str) -> None:
    """Warn about targets such as ``A_B`` whose parts are all targets themselves: taken as one new target."""
    suspicious: dict[str, list[str]] = {}
    for target in sorted(targets):
        for separator in _OTHER_SEPARATORS:
            parts = [p.strip() for p in target.split(separator)]
            if separator != delimiter and len(parts) > 1 and all(p in targets and p != target for p in parts):
                suspicious[target] = parts
                break
    if suspicious:
        first, parts = next(iter(suspicious.items()))
        logger.warning(
            "adata.obs[%r]: %s taken as single new targets, although their parts are targets too; if they are "
            "combinations, join the targets with the delimiter %r (e.g. %r for %r).",
            key,
            ", ".join(repr(t) for t in suspicious),
            delimiter,
            delimiter.join(parts),
            first,
        )


def check_query_cells(adata: Any, registry: Registry) -> None:
    """Hold cells given to a trained model's query to the data contract of :func:`setup_anndata`.

    ``adata`` must be a non-empty AnnData with the registered genes (names and order) and raw counts in the
    registered layer; a ``ValueError`` names what is wrong (log-normalised values, negatives, missing genes, ...).
    """
    if not isinstance(adata, AnnData):
        raise TypeError(f"Expected an AnnData of cells, got {type(adata).__name__}.")
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise ValueError(f"The AnnData is empty ({adata.n_obs} cells x {adata.n_vars} genes).")
    if tuple(map(str, adata.var_names)) != registry.genes:
        raise ValueError(
            "The AnnData's genes differ from the model's registered genes (names or order); subset it with "
            "adata[:, list(model.registry.genes)]."
        )
    matrix, name = _count_matrix(adata, registry.layer)
    validate_counts(matrix, name=name)


def setup_anndata(
    adata: AnnData,
    *,
    perturbation_key: str = "perturbation",
    control: str = "control",
    batch_key: str | None = None,
    layer: str | None = None,
    delimiter: str = "+",
    min_cells: int = 10,
    guide_key: str | None = None,
) -> None:
    """Validate a CRISPR-screen AnnData and register it for pertpyro models.

    Checks the data contract (raw UMI counts, unique names, one perturbation label per cell, control cells present,
    well-formed combinations, complete batch labels) and records the keys, the control label, the sorted target list,
    the genes and the batch categories. The registry freezes the category order, so integer codes survive
    save/load. The counts are checked without densifying a sparse matrix; a backed AnnData is read in row chunks.

    Parameters
    ----------
    adata
        Cells x genes AnnData with raw UMI counts in ``X`` or in ``layers[layer]``.
    perturbation_key
        ``obs`` column with one perturbation label per cell: the control label, a target gene, or targets joined
        by ``delimiter`` (e.g. ``"CBL+CNN1"``).
    control
        Label of control cells, e.g. ``"non-targeting"``.
    batch_key
        ``obs`` column of a batch covariate (replicate, GEM group), or ``None``.
    layer
        Layer holding the raw counts, or ``None`` for ``X``.
    delimiter
        Separator of the targets in a combination label (``"A+B"``; spaces around it are ignored, so ``"A + B"`` is
        the same combination). A label whose parts, split at another usual separator (``"A_B"``, ``"A,B"``), are all
        targets is taken as one new target, with a warning.
    min_cells
        Labels with fewer cells than this are named in a warning (logged): their effects rest on little data.
    guide_key
        ``obs`` column naming each cell's guide (sgRNA), or ``None``. Each guide must belong to one perturbation
        label; the guides of control cells are the screen's negative controls (non-targeting guides).

    Returns
    -------
    None; writes ``adata.uns["pertpyro"]`` (the registry as a plain dict, see
    :class:`~pertpyro.data._registry.Registry`) and changes nothing else in ``adata``.

    Raises
    ------
    ValueError
        If the counts, names, perturbation labels or batch labels break the data contract; the message names the
        offending matrix, column, label or gene and says how to fix it.

    Examples
    --------
    >>> import pertpyro
    >>> adata = pertpyro.data.papalexi2021()
    >>> pertpyro.data.setup_anndata(adata, perturbation_key="perturbation", control="control", batch_key="bio_rep")
    >>> adata.uns["pertpyro"]["batches"]
    ['rep_1', 'rep_2', 'rep_3']
    """
    if not isinstance(adata, AnnData):
        raise TypeError(f"setup_anndata expects an AnnData, got {type(adata).__name__}.")
    if adata.n_obs == 0 or adata.n_vars == 0:
        where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
        raise ValueError(f"{where} is empty ({adata.n_obs} cells x {adata.n_vars} genes): there is nothing to set up.")
    for argument, value in (("perturbation_key", perturbation_key), ("control", control), ("delimiter", delimiter)):
        if not isinstance(value, str) or value == "":
            raise ValueError(f"{argument} must be a non-empty string, got {value!r}.")
    if batch_key is not None and not isinstance(batch_key, str):
        raise ValueError(f"batch_key must be an obs column name or None, got {batch_key!r}.")

    # Cheap checks first: names and obs columns.
    _check_unique_names(adata.var_names, what="var_names", fix="adata.var_names_make_unique()")
    _check_unique_names(adata.obs_names, what="obs_names", fix="adata.obs_names_make_unique()")
    column = _obs_column(adata, perturbation_key, role="perturbation", argument="perturbation_key")
    targets = _register_targets(column, key=perturbation_key, control=control, delimiter=delimiter)
    batches: tuple[str, ...] = ()
    if batch_key is not None:
        batch_column = _obs_column(adata, batch_key, role="batch", argument="batch_key")
        batches = tuple(sorted(_observed_counts(batch_column).index))

    guides: tuple[str, ...] = ()
    guide_labels: tuple[str, ...] = ()
    if guide_key is not None:
        if not isinstance(guide_key, str) or guide_key == "":
            raise ValueError(f"guide_key must be an obs column name or None, got {guide_key!r}.")
        guide_column = _obs_column(adata, guide_key, role="guide", argument="guide_key")
        guides, guide_labels = _register_guides(guide_column, column, key=guide_key)

    matrix, name = _count_matrix(adata, layer)
    validate_counts(matrix, name=name)

    registry = Registry(
        perturbation_key=perturbation_key,
        control=control,
        delimiter=delimiter,
        targets=targets,
        genes=tuple(str(g) for g in adata.var_names),
        layer=layer,
        batch_key=batch_key,
        batches=batches,
        guide_key=guide_key,
        guides=guides,
        guide_labels=guide_labels,
    )
    sizes = _observed_counts(column)
    few = sizes[(sizes < min_cells) & (sizes.index != control)]
    if len(few):
        logger.warning(
            "%d labels have fewer than %d cells (their effects rest on little data): %s.",
            len(few),
            min_cells,
            ", ".join(f"{label} ({n})" for label, n in few.sort_index().items()),
        )
    if REGISTRY_KEY in adata.uns:
        logger.info("Replacing the existing adata.uns[%r] registry.", REGISTRY_KEY)
    adata.uns[REGISTRY_KEY] = registry.to_dict()
    logger.info(
        "Registered %d cells x %d genes from %s: %d targets, control %r, %d batches.",
        adata.n_obs,
        registry.n_genes,
        name,
        registry.n_targets,
        control,
        registry.n_batches,
    )
