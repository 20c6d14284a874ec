"""Benchmark runner: a model and the baselines, scored side by side on held-out cells."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import pandas as pd
from anndata import AnnData

from pertpyro.data._registry import get_registry
from pertpyro.data._statistics import (
    CHUNK_SIZE,
    REFERENCES,
    STRONG_SIGNAL_TO_NOISE,
    Reference,
    label_moments,
    shift_from_moments,
    strong_from_moments,
)
from pertpyro.evaluation._baselines import BASELINES, Baseline
from pertpyro.evaluation._metrics import shift_metrics, summarise

logger = logging.getLogger(__name__)

DEFAULT_BASELINES = ("no_change", "training_mean", "shrunk_training_mean", "additive")


class ShiftPredictor(Protocol):
    """Any model :func:`ate_metrics` can score: its training cells and a ``predict_shift`` (labels x genes).

    A ``iwelbo(adata)`` method, where the model has one, adds the held-out likelihood to its rows.
    """

    adata: AnnData

    def predict_shift(self, *args: Any, **kwargs: Any) -> pd.DataFrame:
        """Predicted mean shift of each label against control, ``labels x genes``."""
        ...


def _model_predictions(model: ShiftPredictor, labels: list[str], **kwargs: Any) -> pd.DataFrame:
    """``model.predict_shift(labels)``; if it refuses the batch, label by label with NaN for refused labels."""
    try:
        return pd.DataFrame(model.predict_shift(list(labels), **kwargs))
    except ValueError as err:
        logger.warning("model.predict_shift refused the labels (%s); retrying label by label.", err)
    rows, failed = [], []
    for label in labels:
        try:
            rows.append(pd.DataFrame(model.predict_shift([label], **kwargs)).loc[[label]])
        except ValueError:
            failed.append(label)
    if failed:
        logger.warning("The model cannot predict %d labels (NaN): %s", len(failed), failed)
    out = pd.concat(rows) if rows else pd.DataFrame(index=pd.Index([], dtype=object))
    return out.reindex(labels)


def to_perturbed_reference(predicted: pd.DataFrame, weights: pd.Series) -> pd.DataFrame:
    """Turn predicted shifts versus control into shifts versus the mean of all perturbed cells.

    The observed perturbed reference is the mean of all perturbed test cells, i.e. the label means weighted by
    their test cell counts ``n_q``; so the prediction versus it is ``pred_p - sum_q w_q pred_q`` with
    ``w_q = n_q / sum n``. If the predictions equal the observed shifts versus control, the converted ones equal the
    observed shifts versus the perturbed reference exactly. Labels with NaN predictions are left out of the sum and
    the weights of the others renormalised.

    Parameters
    ----------
    predicted
        Predicted shifts versus control, labels x genes.
    weights
        Test cell count per label (any positive weights; only ratios matter).

    Returns
    -------
    Predicted shifts versus the perturbed reference, same shape.
    """
    w = weights.reindex(predicted.index).to_numpy(dtype=np.float64)
    finite = np.isfinite(predicted.to_numpy()).all(axis=1) & np.isfinite(w)
    if not finite.any():
        return predicted * np.nan
    if not finite.all():
        logger.info("Perturbed reference of predictions computed over the %d predicted labels only.", finite.sum())
    ref = w[finite] @ predicted.to_numpy()[finite] / w[finite].sum()
    return predicted - ref


def _iwelbo_value(model: ShiftPredictor, adata_test: AnnData) -> float:
    value = getattr(model, "iwelbo")(adata_test)  # noqa: B009 (optional method, checked by the caller)
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return float(np.mean(np.asarray(value, dtype=np.float64)))


def ate_metrics(
    model: ShiftPredictor | None,
    adata_test: AnnData,
    *,
    adata_train: AnnData | None = None,
    top_k: int = 20,
    strong: Sequence[str] | None = None,
    reference: Reference | Sequence[Reference] = "control",
    baselines: Sequence[str] | Mapping[str, Baseline] = DEFAULT_BASELINES,
    per_perturbation: bool = False,
    iwelbo: bool = True,
    model_name: str | None = None,
    strong_threshold: float = STRONG_SIGNAL_TO_NOISE,
    predict_kwargs: Mapping[str, Any] | None = None,
    predictions: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Score a model's predicted average treatment effects, and the baselines', on held-out cells.

    The observed shift of each non-control label of ``adata_test`` is its test cells' mean log-normalised expression
    minus the test controls' (``reference="control"``) or minus all perturbed test cells' (``"perturbed"``,
    Systema's reference; predictions versus control are converted by :func:`to_perturbed_reference`). Predictions
    come from ``model.predict_shift(labels)`` and from each baseline fitted on ``adata_train``; both are compared
    with :func:`~pertpyro.evaluation.shift_metrics` and averaged by :func:`~pertpyro.evaluation.summarise`.

    Parameters
    ----------
    model
        Object with ``predict_shift(labels) -> DataFrame`` (labels x genes, shift versus control on
        ``log1p(1e4 x / sum x)``) and ``adata`` (its training AnnData); ``None`` scores the baselines only.
    adata_test
        Held-out cells, set up with :func:`pertpyro.setup_anndata`; must contain control cells.
    adata_train
        Training cells for the baselines; default ``model.adata``.
    top_k
        Number of genes with largest ``|observed shift|`` for the ``*_topk`` metrics.
    strong
        Labels of the ``"strong"`` subset; default :func:`~pertpyro.data.strong_perturbations` on the training
        cells (signal-to-noise ratio of the observed shift versus control ``>= strong_threshold``), so that the
        subset is not selected on the cells it is scored on. The same subset
        is used for both references.
    reference
        ``"control"``, ``"perturbed"``, or a sequence of both.
    baselines
        Names in :data:`~pertpyro.evaluation.BASELINES`, or a mapping of name to a function
        ``(adata_train, labels) -> DataFrame``.
    per_perturbation
        Return the long table, one row per (method, reference, perturbation), instead of the summary.
    iwelbo
        If the model has ``iwelbo(adata)``, add its value on ``adata_test`` (mean if it returns one per cell) as
        column ``iwelbo`` of the model's rows (NaN for baselines).
    model_name
        Method name of the model's rows (default: its class name).
    strong_threshold
        Signal-to-noise threshold of the default strong subset.
    predict_kwargs
        Keyword arguments of ``model.predict_shift`` (e.g. ``{"n_samples": 100}``).
    predictions
        The model's predicted shifts versus control (labels x genes), computed beforehand (e.g. from
        :func:`~pertpyro.evaluation._draws.heldout_draws`); ``model.predict_shift`` is then not called.

    Returns
    -------
    Tidy DataFrame. Summary: columns ``method``, ``subset`` (``"all"``, ``"strong"``), ``reference``,
    ``n_perturbations``, ``n_predicted``, then :data:`~pertpyro.evaluation.METRIC_COLUMNS` (and ``iwelbo``); the model
    first. With ``per_perturbation=True``: ``method``, ``reference``, ``perturbation``, ``strong``, ``n_cells`` and
    the metric columns.
    """
    references = [reference] if isinstance(reference, str) else list(reference)
    bad = [r for r in references if r not in REFERENCES]
    if bad or not references:
        raise ValueError(f"reference must be among {REFERENCES}, got {reference!r}.")
    if adata_train is None:
        if model is None:
            raise ValueError("Pass adata_train when model is None: the baselines need training cells.")
        adata_train = model.adata
    if isinstance(baselines, Mapping):
        baseline_fns: dict[str, Callable] = dict(baselines)
    else:
        unknown = [b for b in baselines if b not in BASELINES]
        if unknown:
            raise ValueError(f"Unknown baselines {unknown}; known: {list(BASELINES)}.")
        baseline_fns = {b: BASELINES[b] for b in baselines}

    registry = get_registry(adata_test)
    moments = label_moments(adata_test, chunk_size=CHUNK_SIZE)
    if registry.control not in moments.mean.index:
        raise ValueError(f"adata_test has no control cells (label {registry.control!r}); shifts are undefined.")
    labels = [lab for lab in moments.mean.index if lab != registry.control]
    if not labels:
        raise ValueError("adata_test has no perturbed cells to evaluate.")
    observed = {ref: shift_from_moments(moments, registry.control, reference=ref) for ref in references}
    if strong is None:  # chosen on the training cells, never on the cells being scored
        strong = strong_from_moments(
            label_moments(adata_train, chunk_size=CHUNK_SIZE), registry.control, threshold=strong_threshold
        )
    strong = [str(s) for s in strong]
    logger.info("Strong subset (%d labels): %s", len(strong), strong)

    methods: dict[str, pd.DataFrame] = {}
    if model is not None:
        model_name = model_name or type(model).__name__
        if predictions is None:
            methods[model_name] = _model_predictions(model, labels, **dict(predict_kwargs or {}))
        else:
            methods[model_name] = pd.DataFrame(predictions)
    for name, fn in baseline_fns.items():
        methods[name] = pd.DataFrame(fn(adata_train, labels))

    iwelbo_value = None
    if model is not None and iwelbo and callable(getattr(model, "iwelbo", None)):
        iwelbo_value = _iwelbo_value(model, adata_test)

    tables = []
    for method, pred in methods.items():
        pred = pred.reindex(index=labels)
        for ref in references:
            pred_ref = pred if ref == "control" else to_perturbed_reference(pred, moments.n)
            per = shift_metrics(pred_ref, observed[ref], top_k=top_k)
            if per_perturbation:
                table = per.reset_index()
                table.insert(1, "strong", table["perturbation"].isin(strong))
                table.insert(2, "n_cells", moments.n.reindex(per.index).to_numpy())
            else:
                table = summarise(per, strong).reset_index()
            table.insert(0, "method", method)
            table.insert(1, "reference", ref)
            if iwelbo_value is not None:
                table["iwelbo"] = iwelbo_value if method == model_name else math.nan
            tables.append(table)
    out = pd.concat(tables, ignore_index=True)
    if not per_perturbation:
        lead = ["method", "subset", "reference", "n_perturbations", "n_predicted"]
        out = out[lead + [c for c in out.columns if c not in lead]]
    return out


def format_table(df: pd.DataFrame, *, digits: int = 3) -> str:
    """Markdown table of a metrics DataFrame (as :func:`ate_metrics` returns), for the CLI and reports.

    Parameters
    ----------
    df
        Any DataFrame; its index is dropped unless named.
    digits
        Significant digits of floats; NaN prints as ``n/a`` (e.g. Pearson of the no-change baseline).

    Returns
    -------
    Markdown text, one line per row, ending in a newline.
    """
    if df.index.name is not None or isinstance(df.index, pd.MultiIndex):
        df = df.reset_index()

    def cell(value: Any) -> str:
        if isinstance(value, float | np.floating):
            return "n/a" if not np.isfinite(value) else f"{value:.{digits}g}"
        return str(value).replace("|", "\\|")

    header = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"
