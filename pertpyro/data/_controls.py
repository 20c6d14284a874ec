"""Negative controls: control cells held out as null pseudo-targets, whose true effect on every gene is zero.

Every CRISPR screen carries non-targeting guides. :func:`add_negative_controls` gives the cells of some of them
(or, without a guide column, random groups of control cells) a fake target label, such as ``"null_NTg7"``. A model
fitted on the relabelled screen estimates an effect for each pseudo-target as for any real target; since those
cells are control cells, every such effect is truly zero, and the pseudo-targets show how often the model calls a
null effect real (:func:`pertpyro.evaluation.control_table`) and calibrate its intervals
(:func:`pertpyro.posterior.null_calibration`). The labels are recorded in ``adata.uns["pertpyro_negative_controls"]``
so that downstream code knows which targets are nulls.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData

from pertpyro._keys import NEGATIVE_CONTROLS_KEY, REGISTRY_KEY

logger = logging.getLogger(__name__)

NULL_PREFIX = "null_"
"""Prefix of the labels of null pseudo-targets."""

MIN_CONTROL_FRACTION = 0.5
"""Share of the control cells that must stay controls."""


def _pick_guides(guides: pd.Series, n_controls: int, rng: np.random.Generator, min_cells: int) -> list[str]:
    sizes = guides.value_counts()
    eligible = sorted(str(g) for g in sizes.index[sizes >= min_cells])
    if len(eligible) < n_controls + 1:
        raise ValueError(
            f"{n_controls} null pseudo-targets need {n_controls + 1} non-targeting guides with >= {min_cells} cells "
            f"(one guide each, and at least one left as control); the control cells have {len(eligible)}."
        )
    return sorted(rng.choice(eligible, size=n_controls, replace=False).tolist())


def add_negative_controls(
    adata: AnnData,
    n_controls: int = 2,
    *,
    perturbation_key: str = "perturbation",
    control: str = "control",
    guide_key: str | None = None,
    guides: Sequence[str] | None = None,
    cells_per_control: int | None = None,
    min_cells: int = 50,
    seed: int = 0,
) -> list[str]:
    """Relabel control cells as null pseudo-targets (in place); call before :func:`pertpyro.setup_anndata`.

    With a guide column, each pseudo-target is the cells of one non-targeting guide (``"null_<guide>"``): the same
    unit as a real target's cells, so its estimate carries the guide-to-guide variation a real target's does.
    Without one, each is a random group of control cells (``"null_1"``, ``"null_2"``, ...).

    Parameters
    ----------
    adata
        Screen with raw counts; ``obs[perturbation_key]`` is changed for the chosen cells.
    n_controls
        Number of pseudo-targets (``0``: nothing is changed).
    perturbation_key, control
        Perturbation column and control label.
    guide_key
        ``obs`` column of guides; ``None``: random groups of control cells.
    guides
        Non-targeting guides to hold out (overrides ``n_controls``); default: ``n_controls`` guides with at least
        ``min_cells`` cells, drawn at random with ``seed``.
    cells_per_control
        Without guides: cells per pseudo-target (default: the median cell count of the real single targets,
        capped so that half of the controls stay).
    min_cells
        Smallest guide that may be drawn.
    seed
        Seed of the draw.

    Returns
    -------
    The pseudo-target labels, also stored in ``adata.uns["pertpyro_negative_controls"]`` (label -> guides or
    number of cells).

    Raises
    ------
    ValueError
        Too few control cells or non-targeting guides, an unknown guide, or labels already taken.
    """
    if isinstance(n_controls, bool) or not isinstance(n_controls, int | np.integer) or n_controls < 0:
        raise ValueError(f"n_controls must be a non-negative integer, got {n_controls!r}.")
    if perturbation_key not in adata.obs:
        raise ValueError(f"adata.obs has no perturbation column {perturbation_key!r}.")
    labels = adata.obs[perturbation_key].astype(str).to_numpy().copy()
    is_control = labels == control
    if guides is None and n_controls == 0:
        return []
    if not is_control.any():
        raise ValueError(f"adata.obs[{perturbation_key!r}] has no control cells (label {control!r}).")
    rng = np.random.default_rng(seed)
    record: dict[str, object] = {}
    if guide_key is not None:
        if guide_key not in adata.obs:
            raise ValueError(f"adata.obs has no guide column {guide_key!r}.")
        guide_column = adata.obs[guide_key].astype(str)
        control_guides = guide_column[is_control]
        if guides is None:
            chosen = _pick_guides(control_guides, n_controls, rng, min_cells)
        else:
            chosen = [str(g) for g in guides]
            unknown = sorted(set(chosen) - set(control_guides))
            if unknown:
                raise ValueError(f"Guides {unknown} are not guides of control cells (label {control!r}).")
        for guide in chosen:
            label = f"{NULL_PREFIX}{guide}"
            labels[is_control & (guide_column.to_numpy() == guide)] = label
            record[label] = [guide]
    else:
        if guides is not None:
            raise ValueError("guides needs a guide column: pass guide_key.")
        rows = rng.permutation(np.flatnonzero(is_control))
        if cells_per_control is None:
            sizes = pd.Series(labels[~is_control]).value_counts()
            cells_per_control = int(np.median(sizes)) if len(sizes) else len(rows) // (2 * n_controls)
            cells_per_control = min(cells_per_control, int(len(rows) * MIN_CONTROL_FRACTION) // n_controls)
        if cells_per_control < 1:
            raise ValueError(f"Too few control cells ({len(rows)}) for {n_controls} null pseudo-targets.")
        for i in range(n_controls):
            label = f"{NULL_PREFIX}{len(adata.uns.get(NEGATIVE_CONTROLS_KEY, {})) + i + 1}"
            labels[rows[i * cells_per_control : (i + 1) * cells_per_control]] = label
            record[label] = int(cells_per_control)
    taken = sorted(set(record) & set(adata.obs[perturbation_key].astype(str)))
    if taken:
        raise ValueError(f"Labels {taken} are in use already; null pseudo-targets need new labels.")
    left = int((labels == control).sum())
    if left < MIN_CONTROL_FRACTION * is_control.sum():
        raise ValueError(
            f"The null pseudo-targets would leave {left} of {int(is_control.sum())} control cells; keep at least "
            f"{MIN_CONTROL_FRACTION:.0%} (fewer or smaller pseudo-targets)."
        )
    adata.obs[perturbation_key] = pd.Categorical(labels)
    adata.uns[NEGATIVE_CONTROLS_KEY] = {**dict(adata.uns.get(NEGATIVE_CONTROLS_KEY, {})), **record}  # earlier ones stay
    logger.info("Null pseudo-targets %s; %d control cells stay controls.", sorted(record), left)
    return sorted(record)


def negative_control_labels(adata: AnnData) -> list[str]:
    """Labels of the null pseudo-targets of ``adata`` (empty when :func:`add_negative_controls` never ran)."""
    return sorted(str(label) for label in adata.uns.get(NEGATIVE_CONTROLS_KEY, {}))


def restore_controls(adata: AnnData) -> AnnData:
    """A copy of ``adata`` whose null pseudo-targets' cells carry the control label again (the screen as shipped).

    Used where the cells are scored rather than fitted: held-out control cells, and the training cells of the
    baselines. The registry is kept (its targets still name the pseudo-targets, which no cell carries any more).
    """
    nulls = negative_control_labels(adata)
    out = adata.copy()
    if not nulls:
        return out
    registry = dict(adata.uns[REGISTRY_KEY])
    key, control = str(registry["perturbation_key"]), str(registry["control"])
    labels = out.obs[key].astype(str).to_numpy().copy()
    labels[np.isin(labels, nulls)] = control
    out.obs[key] = pd.Categorical(labels)
    del out.uns[NEGATIVE_CONTROLS_KEY]
    return out
