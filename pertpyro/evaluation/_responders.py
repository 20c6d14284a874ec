"""Compare per-cell responder calls of two methods (e.g. pertpyro's efficacy posterior and Mixscape's KO / NP).

A *responder call* says, for each perturbed cell, whether the knockout took effect in it (``True``) or the cell
escaped (``False``). Two questions are asked of the calls of each method:

1. **Do the methods agree?** :func:`call_agreement`: per target, the fraction of cells called alike, Cohen's kappa
   (agreement beyond what the two responder fractions give by chance) and each method's responder fraction.

2. **Do the calls isolate the effect, out of sample?** :func:`responder_effects`, on a train / test split. Both
   methods call a cell from that cell's own counts, so the shift of a method's responders is partly made by the
   selection (a cell is called because it looks shifted) and cannot be judged on the cells that were called. The
   held-out view separates what the calls learn from what they select:

   - *responder ATE, train -> test*: the shift of the training responders (mean log-normalised expression minus that
     of the training controls) is the method's estimate of the effect among responders; it is scored as a
     prediction of the held-out responders' shift (Pearson over all genes and the top-k, MSE;
     :func:`~pertpyro.evaluation.shift_metrics`). Calling every cell a responder gives the training-mean baseline,
     so a method whose calls carry no information about the effect cannot beat it by much.
   - *effect of held-out responders and non-responders on one yardstick*: each group's held-out shift projected on
     the target's training intent-to-treat shift ``d`` (all training cells of the target minus training controls),
     as a share of the held-out intent-to-treat shift's projection: ``<s_G, d> / <s_ITT, d>``. The yardstick is the
     same for both methods and was fitted on other cells. All held-out cells together score 1; calls that separate
     escapers give responders above 1 and non-responders near 0. Non-responders that keep part of the effect
     (``> 0``) mean missed responders: calls that are too strict. Calling fewer cells raises both scores, so
     the non-responders' score exposes strictness; it does not expose laxness (calling escapers responders
     dilutes the responders but leaves the non-responders near 0), so read it with the responder fraction.
   - *positive control*: for a target that is a measured gene, the held-out shift of the target gene itself among
     responders and among non-responders (a knockout that took lowers its own transcript through nonsense-mediated
     decay; an escaper does not). Both methods see this gene among all the others when they call a cell, so it is
     one feature of many, not an independent readout.

All shifts are on the scale of :mod:`pertpyro.data._statistics` (mean ``log1p(1e4 x / sum x)``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
from anndata import AnnData
from sklearn.metrics import cohen_kappa_score

from pertpyro.data._registry import get_registry, perturbation_labels
from pertpyro.data._statistics import label_moments
from pertpyro.evaluation._metrics import shift_metrics

logger = logging.getLogger(__name__)

ALL_CELLS = "all"
"""Row of :func:`call_agreement` pooling every perturbed cell."""

AGREEMENT_COLUMNS = ("n_cells", "agreement", "kappa")
"""Columns of :func:`call_agreement` before the per-method responder fractions."""

EFFECT_COLUMNS = (
    "n_train",
    "n_test",
    "responders_train",
    "responders_test",
    "pearson_all",
    "pearson_topk",
    "mse_all",
    "responder_effect",
    "nonresponder_effect",
    "target_responders",
    "target_nonresponders",
)
"""Columns of :func:`responder_effects`, in order."""

_SEP = "\x1f"  # joins a group code and a perturbation label into one label for label_moments


def _check_calls(calls: pd.Series, cells: pd.Index, perturbed: np.ndarray, what: str) -> np.ndarray:
    """Boolean call per cell of ``cells`` (aligned by name); perturbed cells must have a call."""
    missing = cells[perturbed].difference(calls.index)
    if len(missing):
        raise ValueError(f"{what} has no call for {len(missing)} perturbed cells, e.g. {list(missing[:3])}.")
    values = calls.reindex(cells)
    on_perturbed = values[perturbed]
    if on_perturbed.isna().any():
        bad = on_perturbed.index[on_perturbed.isna().to_numpy()]
        raise ValueError(f"{what} is missing (NaN) for {len(bad)} perturbed cells, e.g. {list(bad[:3])}.")
    unique = set(pd.unique(on_perturbed.to_numpy()).tolist())
    if not unique <= {True, False}:  # 0 and 1 compare equal to False and True
        raise ValueError(
            f"{what} must be boolean responder calls (True: the knockout took), got values such as "
            f"{sorted(map(str, unique))[:3]}; threshold probabilities first, e.g. probs > 0.5."
        )
    out = np.zeros(len(cells), dtype=bool)
    out[perturbed] = on_perturbed.to_numpy().astype(bool)
    return out


def _kappa(a: np.ndarray, b: np.ndarray) -> float:
    """Cohen's kappa; NaN when each method gives every cell one call (then kappa says nothing about cells)."""
    if len(a) == 0 or (len(set(a.tolist())) == 1 and len(set(b.tolist())) == 1):
        return np.nan
    return float(cohen_kappa_score(a, b))


def call_agreement(
    calls_a: pd.Series,
    calls_b: pd.Series,
    labels: pd.Series,
    *,
    control: str,
    names: tuple[str, str] = ("a", "b"),
) -> pd.DataFrame:
    """Per target, how well two methods' responder calls agree.

    Parameters
    ----------
    calls_a, calls_b
        Boolean responder call per cell (``True``: the knockout took effect), indexed by cell name; every perturbed
        cell of ``labels`` needs one, control cells are ignored (may be missing or NaN).
    labels
        Perturbation label per cell, indexed by cell name (the cells compared).
    control
        Label of the control cells.
    names
        Names of the two methods, used in the responder-fraction columns.

    Returns
    -------
    DataFrame indexed by perturbation (sorted, then the row ``"all"`` pooling every perturbed cell) with
    :data:`AGREEMENT_COLUMNS` and ``responders_<name>`` per method: cells, fraction called alike, Cohen's kappa
    (NaN when each method gives every cell of the target one call: then the calls separate no cells, and kappa is
    1, 0 or undefined by whether those calls coincide), responder fractions.

    Raises
    ------
    ValueError
        If a perturbed cell lacks a call, a call is not boolean, or the names coincide.
    """
    if len(names) != 2 or names[0] == names[1]:
        raise ValueError(f"names must be two different method names, got {names}.")
    cells = labels.index
    lab = labels.astype(str).to_numpy()
    perturbed = lab != control
    a = _check_calls(calls_a, cells, perturbed, f"calls of {names[0]!r}")
    b = _check_calls(calls_b, cells, perturbed, f"calls of {names[1]!r}")
    groups = [(t, lab == t) for t in sorted(set(lab[perturbed].tolist()))] + [(ALL_CELLS, perturbed)]
    rows = []
    for _, mask in groups:
        ma, mb = a[mask], b[mask]
        rows.append([int(mask.sum()), float((ma == mb).mean()), _kappa(ma, mb), float(ma.mean()), float(mb.mean())])
    columns = [*AGREEMENT_COLUMNS, f"responders_{names[0]}", f"responders_{names[1]}"]
    return pd.DataFrame(rows, index=pd.Index([g for g, _ in groups], name="perturbation"), columns=columns)


@dataclass(frozen=True)
class ResponderShifts:
    """Shifts (vs the same cells' controls) of each target's responders, non-responders and all cells.

    ``responders``, ``nonresponders`` and ``all_cells`` are DataFrames (targets x genes; NaN rows for an empty
    group); ``n_responders`` and ``n_cells`` are Series of cell counts per target.
    """

    responders: pd.DataFrame
    nonresponders: pd.DataFrame
    all_cells: pd.DataFrame
    n_responders: pd.Series
    n_cells: pd.Series


def responder_shifts(adata: AnnData, calls: pd.Series) -> ResponderShifts:
    """Shift of each target's responders, non-responders and all cells against the control cells of ``adata``.

    Parameters
    ----------
    adata
        AnnData set up with :func:`pertpyro.setup_anndata`, with control cells.
    calls
        Boolean responder call per cell, indexed by cell name (every perturbed cell of ``adata`` needs one).

    Returns
    -------
    :class:`ResponderShifts`, targets in sorted order.

    Raises
    ------
    ValueError
        Without control cells, or for missing / non-boolean calls.
    """
    registry = get_registry(adata)
    labels = perturbation_labels(adata, registry)
    control = registry.control
    perturbed = labels != control
    if perturbed.all():
        raise ValueError(f"adata has no control cells (label {control!r}): shifts are undefined.")
    responders = _check_calls(calls, adata.obs_names, perturbed, "calls")
    groups = [
        f"{'R' if r else 'N'}{_SEP}{lab}" if p else "C"
        for r, lab, p in zip(responders, labels.tolist(), perturbed, strict=True)
    ]
    means = label_moments(adata, groups).mean
    targets = sorted(set(labels[perturbed].tolist()))
    ref = means.loc["C"]

    def shifts(prefix: str) -> pd.DataFrame:
        rows = means.reindex([f"{prefix}{_SEP}{t}" for t in targets])
        rows.index = pd.Index(targets, name="perturbation")
        return rows - ref

    n_cells = pd.Series([int((labels == t).sum()) for t in targets], index=pd.Index(targets, name="perturbation"))
    n_resp = pd.Series([int((responders & (labels == t)).sum()) for t in targets], index=n_cells.index)
    resp, nonresp = shifts("R"), shifts("N")
    w = (n_resp / n_cells).to_numpy()[:, None]
    all_cells = resp.fillna(0.0) * w + nonresp.fillna(0.0) * (1.0 - w)
    return ResponderShifts(resp, nonresp, all_cells, n_resp.rename("n_responders"), n_cells.rename("n_cells"))


def _projection(shift: pd.Series, direction: np.ndarray, scale: float) -> float:
    if shift.isna().any() or not np.isfinite(scale) or scale == 0.0:
        return np.nan
    return float(shift.to_numpy() @ direction / scale)


def responder_effects(
    adata_train: AnnData,
    adata_test: AnnData,
    calls_train: pd.Series,
    calls_test: pd.Series,
    *,
    top_k: int = 20,
) -> pd.DataFrame:
    """Held-out effect of one method's responders, per target (the definitions are in the module docstring).

    Parameters
    ----------
    adata_train, adata_test
        Training and held-out cells of one split, set up with :func:`pertpyro.setup_anndata`, each with controls.
    calls_train, calls_test
        The method's boolean responder call per cell of each part, indexed by cell name.
    top_k
        Genes of the top-k Pearson (largest ``|held-out responder shift|``).

    Returns
    -------
    DataFrame indexed by the targets present in both parts, with :data:`EFFECT_COLUMNS`: cells per part, responder
    fractions, Pearson / top-k Pearson / MSE of the training responders' shift against the held-out responders'
    shift, ``responder_effect`` and ``nonresponder_effect`` (held-out shifts on the training intent-to-treat
    yardstick, all held-out cells = 1), and the held-out shift of the target gene among responders and
    non-responders (NaN when the target is not a measured gene). Metrics are NaN where a group has no cells.
    """
    if get_registry(adata_train).control != get_registry(adata_test).control:
        raise ValueError("adata_train and adata_test have different control labels.")
    train = responder_shifts(adata_train, calls_train)
    test = responder_shifts(adata_test, calls_test)
    targets = [t for t in train.n_cells.index if t in test.n_cells.index]
    missing = sorted(set(test.n_cells.index) - set(targets))
    if missing:
        logger.warning("Targets without training cells are left out: %s", missing)
    genes = list(adata_test.var_names.astype(str))
    observed = test.responders.loc[targets].dropna()
    metrics = shift_metrics(train.responders.loc[observed.index], observed, top_k=top_k) if len(observed) else None
    rows = []
    for t in targets:
        d = train.all_cells.loc[t].to_numpy()
        scale = float(test.all_cells.loc[t].to_numpy() @ d)
        has_gene = t in genes
        row = [
            int(train.n_cells[t]),
            int(test.n_cells[t]),
            float(train.n_responders[t] / train.n_cells[t]),
            float(test.n_responders[t] / test.n_cells[t]),
        ]
        if metrics is not None and t in metrics.index:
            row += [metrics.at[t, "pearson_all"], metrics.at[t, "pearson_topk"], metrics.at[t, "mse_all"]]
        else:
            row += [np.nan] * 3
        row += [
            _projection(test.responders.loc[t], d, scale),
            _projection(test.nonresponders.loc[t], d, scale),
            float(test.responders.at[t, t]) if has_gene else np.nan,
            float(test.nonresponders.at[t, t]) if has_gene else np.nan,
        ]
        rows.append(row)
    return pd.DataFrame(rows, index=pd.Index(targets, name="perturbation"), columns=list(EFFECT_COLUMNS))
