"""Train / validation / test splits of a screen.

Every split returns a ``pandas.Series`` of ``"train"``, ``"val"`` or ``"test"`` indexed by ``obs_names``; select cells
with ``adata[split == "train"]``. Splits are reproducible: the same AnnData, arguments and ``seed`` give the same split
on every machine.

The stratified protocol:

1. One generator ``numpy.random.default_rng(seed)`` is created.
2. Perturbation labels (control included) are visited in sorted order (Python string order, so upper-case targets
   come before a lower-case ``"control"``).
3. For each label, the positions of its cells in ``adata`` order are permuted with ``rng.permutation``; the first
   ``n_train = round(f_train * n)`` go to train, the next ``n_val = round(f_val * n)`` to val and the remaining
   ``n - n_train - n_val`` to test (``round`` is Python's, halves to even; ``n_val`` is clipped so no count is
   negative).

A label with few cells may get no cells in some split (e.g. a label with one cell lands in train only); such labels
are reported in a log warning, never dropped or raised on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData

from pertpyro.data._registry import get_registry, perturbation_labels

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.64, 0.16, 0.20)


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3:
        raise ValueError(f"fractions must be (train, val, test), got {len(fractions)} values: {fractions}.")
    if any(not np.isfinite(f) or f < 0 for f in fractions):
        raise ValueError(f"fractions must be finite and non-negative, got {fractions}.")
    if abs(sum(fractions) - 1.0) > 1e-8:
        raise ValueError(f"fractions must sum to 1, got {fractions} (sum {sum(fractions)}).")
    return fractions


def _assign(
    positions: np.ndarray, fractions: tuple[float, float, float], rng: np.random.Generator, out: np.ndarray
) -> None:
    """Permute ``positions`` and cut them train/val/test into ``out`` (the protocol in the module docstring)."""
    perm = rng.permutation(positions)
    n = len(perm)
    n_train = min(int(round(fractions[0] * n)), n)
    n_val = min(int(round(fractions[1] * n)), n - n_train)
    out[perm[:n_train]] = "train"
    out[perm[n_train : n_train + n_val]] = "val"
    out[perm[n_train + n_val :]] = "test"


def _as_series(adata: AnnData, assignment: np.ndarray) -> pd.Series:
    return pd.Series(assignment, index=adata.obs_names.copy(), name="split", dtype=object)


def _report_empty(labels: np.ndarray, assignment: np.ndarray, fractions: tuple[float, float, float]) -> None:
    wanted = [s for s, f in zip(SPLITS, fractions, strict=True) if f > 0]
    short = {}
    for label in sorted(set(labels.tolist())):
        have = set(assignment[labels == label].tolist())
        lacking = [s for s in wanted if s not in have]
        if lacking:
            short[label] = lacking
    if short:
        logger.warning("Labels with too few cells have no cells in some splits: %s", short)


def split_cells(adata: AnnData, *, fractions: Sequence[float] = DEFAULT_FRACTIONS, seed: int = 0) -> pd.Series:
    """Random split of cells, stratified by perturbation label.

    Parameters
    ----------
    adata
        AnnData set up with :func:`pertpyro.setup_anndata`.
    fractions
        Train, validation and test fractions; non-negative, summing to 1.
    seed
        Seed of the one ``numpy.random.default_rng`` that permutes every label's cells.

    Returns
    -------
    Series of ``"train"``/``"val"``/``"test"`` indexed by ``obs_names`` (the protocol in the module docstring).

    Raises
    ------
    ValueError
        If ``fractions`` are not three non-negative numbers summing to 1.
    """
    fractions = _check_fractions(fractions)
    labels = perturbation_labels(adata, get_registry(adata))
    rng = np.random.default_rng(seed)
    assignment = np.empty(adata.n_obs, dtype=object)
    for label in sorted(set(labels.tolist())):
        _assign(np.flatnonzero(labels == label), fractions, rng, assignment)
    _report_empty(labels, assignment, fractions)
    return _as_series(adata, assignment)


def split_heldout_perturbations(
    adata: AnnData,
    perturbations: Sequence[str],
    *,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
) -> pd.Series:
    """Hold out whole perturbation labels: all their cells go to test.

    Control cells are split train/val/test with ``fractions`` (so the test set has its own controls). Cells of every
    other label are split between train and val in the ratio ``fractions[0] : fractions[1]``; they get no test
    cells, because the test set measures prediction of the held-out labels. A combination containing a held-out
    target stays in training unless it is listed too. Labels are visited in sorted order with one
    ``numpy.random.default_rng(seed)``, as in :func:`split_cells`.

    Parameters
    ----------
    adata
        AnnData set up with :func:`pertpyro.setup_anndata`.
    perturbations
        Labels to hold out, exactly as in ``obs`` (e.g. ``"STAT1"`` or ``"CBL+CNN1"``).
    fractions
        Train, validation and test fractions of the control cells.
    seed
        Seed of the generator.

    Returns
    -------
    Series of ``"train"``/``"val"``/``"test"`` indexed by ``obs_names``; ``attrs["heldout"]`` lists the held-out labels.

    Raises
    ------
    ValueError
        For an unknown label, the control label, an empty list, or ``fractions`` that do not sum to 1.
    """
    fractions = _check_fractions(fractions)
    if fractions[2] <= 0:
        raise ValueError("fractions[2] (test) must be positive so the test set has control cells.")
    registry = get_registry(adata)
    labels = perturbation_labels(adata, registry)
    present = set(labels.tolist())
    heldout = [str(p) for p in (perturbations if not isinstance(perturbations, str) else [perturbations])]
    if not heldout:
        raise ValueError("perturbations is empty: name at least one label to hold out.")
    if registry.control in heldout:
        raise ValueError(f"The control label {registry.control!r} cannot be held out; controls are always split.")
    unknown = sorted(set(heldout) - present)
    if unknown:
        raise ValueError(f"Unknown perturbation labels {unknown}: no cells carry them.")
    seen_total = fractions[0] + fractions[1]
    seen_fractions = (fractions[0] / seen_total, fractions[1] / seen_total, 0.0) if seen_total > 0 else (1.0, 0.0, 0.0)
    rng = np.random.default_rng(seed)
    assignment = np.empty(adata.n_obs, dtype=object)
    for label in sorted(present):
        positions = np.flatnonzero(labels == label)
        if label in heldout:
            assignment[positions] = "test"
        elif label == registry.control:
            _assign(positions, fractions, rng, assignment)
        else:
            _assign(positions, seen_fractions, rng, assignment)
    control_mask = labels == registry.control
    _report_empty(labels[control_mask], assignment[control_mask], fractions)
    out = _as_series(adata, assignment)
    out.attrs["heldout"] = sorted(set(heldout))
    return out


def split_heldout_combinations(
    adata: AnnData,
    *,
    heldout: int | Sequence[str],
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
) -> pd.Series:
    """Hold out combination labels (those with the registry's delimiter, e.g. ``"CBL+CNN1"``); singles stay seen.

    Parameters
    ----------
    adata
        AnnData set up with :func:`pertpyro.setup_anndata`.
    heldout
        Either the combination labels to hold out, or a number of combinations drawn at random (without replacement,
        from the sorted combination labels, by ``numpy.random.default_rng(seed)``).
    fractions
        As in :func:`split_heldout_perturbations`.
    seed
        Seed of the generator (draws the combinations, then splits as :func:`split_heldout_perturbations` with
        the same seed).

    Returns
    -------
    Series of ``"train"``/``"val"``/``"test"`` indexed by ``obs_names``; ``attrs["heldout"]`` lists the held-out labels.

    Raises
    ------
    ValueError
        If a listed label is not a combination present in ``adata``, or more combinations are asked for than exist.
    """
    registry = get_registry(adata)
    labels = perturbation_labels(adata, registry)
    combos = sorted({lab for lab in labels.tolist() if lab != registry.control and len(registry.split_label(lab)) > 1})
    if isinstance(heldout, int | np.integer):
        n = int(heldout)
        if n < 1 or n > len(combos):
            raise ValueError(f"Cannot hold out {n} combinations: adata has {len(combos)} combination labels.")
        chosen = sorted(np.random.default_rng(seed).choice(combos, size=n, replace=False).tolist())
    else:
        chosen = [heldout] if isinstance(heldout, str) else [str(h) for h in heldout]
        not_combo = sorted(set(chosen) - set(combos))
        if not_combo:
            raise ValueError(
                f"Labels {not_combo} are not combinations present in adata (joined by {registry.delimiter!r})."
            )
    return split_heldout_perturbations(adata, chosen, fractions=fractions, seed=seed)
