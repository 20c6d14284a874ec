"""The registry: what :func:`pertpyro.setup_anndata` records about a screen, and the helpers that read it.

The registry freezes the column names, the control label, the ordered target list, the gene list and the batch
categories, so that integer codes survive ``save``/``load`` and the model never reads a column the registry does
not name. It is stored as a plain dict in ``adata.uns["pertpyro"]`` (h5ad-serialisable).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from pertpyro._keys import REGISTRY_KEY


@dataclass(frozen=True)
class Registry:
    """Frozen description of a registered screen.

    Parameters
    ----------
    perturbation_key
        ``obs`` column with one perturbation label per cell.
    control
        Label of control (non-targeting) cells.
    delimiter
        Separator of targets in a combination label, e.g. ``"+"`` in ``"CBL+CNN1"``.
    targets
        Ordered individual targets (never the control label); column ``t`` of every design matrix is ``targets[t]``.
    genes
        Ordered gene names (``var_names``) the model was set up with.
    layer
        Layer holding raw counts, or ``None`` for ``X``.
    batch_key
        ``obs`` column of a batch covariate, or ``None``.
    batches
        Ordered batch categories (empty when ``batch_key`` is ``None``).
    guide_key
        ``obs`` column naming each cell's guide, or ``None``.
    guides
        Ordered guide names (empty when ``guide_key`` is ``None``).
    guide_labels
        Perturbation label of each guide, aligned with ``guides``; guides of the control label are the screen's
        negative controls (non-targeting guides).
    """

    perturbation_key: str
    control: str
    delimiter: str
    targets: tuple[str, ...]
    genes: tuple[str, ...]
    layer: str | None = None
    batch_key: str | None = None
    batches: tuple[str, ...] = field(default_factory=tuple)
    guide_key: str | None = None
    guides: tuple[str, ...] = field(default_factory=tuple)
    guide_labels: tuple[str, ...] = field(default_factory=tuple)

    @property
    def n_targets(self) -> int:
        """Number of individual targets."""
        return len(self.targets)

    @property
    def n_genes(self) -> int:
        """Number of genes."""
        return len(self.genes)

    @property
    def n_batches(self) -> int:
        """Number of batch categories (0 without a batch covariate)."""
        return len(self.batches)

    @property
    def control_guides(self) -> tuple[str, ...]:
        """Guides of control cells (non-targeting guides), in registry order."""
        return tuple(g for g, label in zip(self.guides, self.guide_labels, strict=True) if label == self.control)

    def to_dict(self) -> dict:
        """Plain-dict form, storable in ``adata.uns`` and in checkpoints."""
        out = asdict(self)
        out["targets"] = list(self.targets)
        out["genes"] = list(self.genes)
        out["batches"] = list(self.batches)
        out["layer"] = "" if self.layer is None else self.layer
        out["batch_key"] = "" if self.batch_key is None else self.batch_key
        out["guide_key"] = "" if self.guide_key is None else self.guide_key
        out["guides"] = list(self.guides)
        out["guide_labels"] = list(self.guide_labels)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> Registry:
        """Inverse of :meth:`to_dict` (also accepts what h5ad round-trips give back)."""
        return cls(
            perturbation_key=str(d["perturbation_key"]),
            control=str(d["control"]),
            delimiter=str(d["delimiter"]),
            targets=tuple(str(t) for t in np.asarray(d["targets"]).tolist()),
            genes=tuple(str(g) for g in np.asarray(d["genes"]).tolist()),
            layer=(str(d["layer"]) or None) if d.get("layer") is not None else None,
            batch_key=(str(d["batch_key"]) or None) if d.get("batch_key") is not None else None,
            batches=tuple(str(b) for b in np.asarray(d.get("batches", [])).tolist()),
            guide_key=(str(d["guide_key"]) or None) if d.get("guide_key") is not None else None,
            guides=tuple(str(g) for g in np.asarray(d.get("guides", [])).tolist()),
            guide_labels=tuple(str(g) for g in np.asarray(d.get("guide_labels", [])).tolist()),
        )

    def split_label(self, label: str) -> tuple[str, ...]:
        """Targets of one perturbation label (empty tuple for the control label)."""
        if label == self.control:
            return ()
        parts = tuple(p.strip() for p in str(label).split(self.delimiter))
        if any(p == "" for p in parts):
            raise ValueError(f"Perturbation label {label!r} has an empty target between {self.delimiter!r} delimiters.")
        if self.control in parts:
            raise ValueError(
                f"Perturbation label {label!r} combines the control label {self.control!r} with targets; "
                "label control cells with the control label alone."
            )
        return parts


def get_registry(adata: AnnData) -> Registry:
    """Read the registry of an AnnData set up with :func:`pertpyro.setup_anndata`.

    Raises
    ------
    ValueError
        If ``adata`` was never set up.
    """
    if REGISTRY_KEY not in adata.uns:
        raise ValueError(
            f"This AnnData has no adata.uns[{REGISTRY_KEY!r}]: call pertpyro.setup_anndata(adata, ...) first."
        )
    return Registry.from_dict(dict(adata.uns[REGISTRY_KEY]))


def design_matrix(labels: Sequence[str] | pd.Series | np.ndarray, registry: Registry) -> np.ndarray:
    """Multi-hot target design of perturbation labels.

    Parameters
    ----------
    labels
        One label per cell: the control label, a target, or targets joined by ``registry.delimiter``.
    registry
        Registry giving the target order.

    Returns
    -------
    ``float32`` array of shape ``(n_labels, n_targets)``; row ``i`` has ones at the targets of ``labels[i]``.

    Raises
    ------
    ValueError
        For a target the registry does not know (the model cannot predict a target it never saw).
    """
    index = {t: i for i, t in enumerate(registry.targets)}
    labels = [str(x) for x in np.asarray(labels, dtype=object).tolist()]
    unique = list(dict.fromkeys(labels))
    rows = {}
    for label in unique:
        row = np.zeros(registry.n_targets, dtype=np.float32)
        for target in registry.split_label(label):
            if target not in index:
                known = ", ".join(registry.targets[:10]) + (" ..." if registry.n_targets > 10 else "")
                raise ValueError(
                    f"Unknown perturbation target {target!r} in label {label!r}: the model knows only "
                    f"the targets registered at setup ({known}) and the control label {registry.control!r}."
                )
            row[index[target]] = 1.0
        rows[label] = row
    if not labels:
        return np.zeros((0, registry.n_targets), dtype=np.float32)
    return np.stack([rows[label] for label in labels])


def get_counts(adata: AnnData, registry: Registry) -> np.ndarray | sp.csr_matrix:
    """Raw count matrix named by the registry (``X`` or a layer); never densified (other sparse formats become CSR)."""
    mat = adata.X if registry.layer is None else adata.layers[registry.layer]
    if sp.issparse(mat) and not sp.isspmatrix_csr(mat):
        mat = sp.csr_matrix(mat)
    return mat


def batch_codes(adata: AnnData, registry: Registry) -> np.ndarray:
    """Integer batch code per cell (zeros without a batch covariate).

    Raises
    ------
    ValueError
        For a batch category not seen at setup.
    """
    if registry.batch_key is None:
        return np.zeros(adata.n_obs, dtype=np.int64)
    if registry.batch_key not in adata.obs:
        raise ValueError(f"adata.obs has no batch column {registry.batch_key!r} named in the registry.")
    values = adata.obs[registry.batch_key].astype(str).to_numpy()
    lookup = {b: i for i, b in enumerate(registry.batches)}
    unknown = sorted(set(values) - set(lookup))
    if unknown:
        raise ValueError(
            f"adata.obs[{registry.batch_key!r}] has batch categories not seen at setup: {unknown[:5]}; "
            f"known: {list(registry.batches)}."
        )
    return np.fromiter((lookup[v] for v in values), dtype=np.int64, count=len(values))


def perturbation_labels(adata: AnnData, registry: Registry) -> np.ndarray:
    """Perturbation label per cell, as strings."""
    if registry.perturbation_key not in adata.obs:
        raise ValueError(f"adata.obs has no perturbation column {registry.perturbation_key!r} named in the registry.")
    return adata.obs[registry.perturbation_key].astype(str).to_numpy()


def targeting_guides(registry: Registry) -> list[tuple[str, str]]:
    """The registered guides that target something, each with its perturbation label, in registry order."""
    return [
        (g, label) for g, label in zip(registry.guides, registry.guide_labels, strict=True) if label != registry.control
    ]


def guide_rows(adata: AnnData, registry: Registry) -> np.ndarray:
    """Row of each cell's guide among :func:`targeting_guides` (``int64``); ``-1`` for a control guide.

    Cells whose guide the registry does not know, or whose perturbation label is not its guide's (e.g. cells
    relabelled as null pseudo-targets), and data without the guide column, get ``-1`` too: the model then gives
    them their targets' rate.
    """
    rows = np.full(adata.n_obs, -1, dtype=np.int64)
    if registry.guide_key is None or registry.guide_key not in adata.obs:
        return rows
    guides = targeting_guides(registry)
    names = pd.Index([g for g, _ in guides])
    cell_guides = adata.obs[registry.guide_key].astype(str).to_numpy()
    found = names.get_indexer(cell_guides)
    guide_label = np.asarray([label for _, label in guides] + [""], dtype=object)[found]  # "" where not found
    same = guide_label == perturbation_labels(adata, registry).astype(object)
    rows[(found >= 0) & same] = found[(found >= 0) & same]
    return rows
