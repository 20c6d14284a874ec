"""Metrics over several random splits, and the paired difference model - baseline with an interval across splits.

One split is not evidence: the model and the baselines are scored on ``K`` random splits (each method on the same
training and test cells of a split), and each metric's difference model - baseline is summarised by its mean over
the splits and a Student-t interval over the ``K`` paired differences,
``mean +- t_{K-1, (1+level)/2} * sd / sqrt(K)``.

Why a t interval and not a bootstrap: with ``K = 5`` differences a percentile bootstrap can only resample five
values, so its interval is too narrow (about 80% coverage at a nominal 95% for normal data), while the t interval
is exact when the differences are normal; each difference is an average over many perturbations and genes, so they
are close to it. The splits are not independent (two random 64% training sets share most cells), which makes any
interval across splits somewhat optimistic; ``test_train_ratio`` widens it with Nadeau and Bengio's (2003)
correction of the variance, ``(1/K + n_test/n_train) sd^2`` instead of ``sd^2 / K``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import stats

from pertpyro.data._registry import get_registry, perturbation_labels
from pertpyro.evaluation._runner import ate_metrics, format_table
from pertpyro.model import PerturbationModel

logger = logging.getLogger(__name__)

PAIRED_METRICS = ("pearson_all", "pearson_topk", "mse_all")
"""Metrics :func:`paired_differences` summarises by default."""
PAIRED_BASELINES = ("training_mean", "shrunk_training_mean")
"""Baselines the model is compared with by default."""


def paired_differences(
    per_split: pd.DataFrame,
    *,
    model: str,
    baselines: Sequence[str] = PAIRED_BASELINES,
    metrics: Sequence[str] = PAIRED_METRICS,
    by: Sequence[str] = ("subset", "reference"),
    split_column: str = "split",
    level: float = 0.95,
    test_train_ratio: float | None = None,
) -> pd.DataFrame:
    """Mean of each metric over splits and the paired difference model - baseline with a t interval.

    Parameters
    ----------
    per_split
        Long table with one row per (split, method, ``by``...) and metric columns, e.g. :func:`ate_metrics`'s
        summaries stacked with a ``split`` column (as :func:`repeated_metrics` returns).
    model
        Method name of the model's rows.
    baselines
        Method names to compare the model with.
    metrics
        Metric columns to summarise.
    by
        Columns that define separate comparisons (e.g. subset and reference).
    split_column
        Column naming the split; a split is paired only where both methods have a finite value.
    level
        Confidence level of the interval.
    test_train_ratio
        ``n_test / n_train`` of the splits: widens the interval by Nadeau and Bengio's correction for overlapping
        training sets (module docstring); ``None`` gives the plain t interval.

    Returns
    -------
    One row per (``by``..., baseline, metric): ``n_splits``, ``model`` and ``baseline`` (means over the paired
    splits), ``difference`` (mean of model - baseline), ``sd`` (its standard deviation across splits), ``lower``
    and ``upper`` (the interval; NaN with fewer than two splits).

    Raises
    ------
    ValueError
        Unknown model, baseline or metric, or ``level`` outside (0, 1).
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}.")
    if test_train_ratio is not None and not test_train_ratio >= 0:
        raise ValueError(f"test_train_ratio must be non-negative, got {test_train_ratio}.")
    methods = set(per_split["method"])
    missing = [m for m in [model, *baselines] if m not in methods]
    if missing:
        raise ValueError(f"Methods {missing} are not in the table (methods: {sorted(methods)}).")
    unknown = [m for m in metrics if m not in per_split.columns]
    if unknown:
        raise ValueError(f"Metrics {unknown} are not columns of the table.")
    keys = [*by, split_column]
    wide = per_split.set_index([*keys, "method"])[list(metrics)]
    rows = []
    for baseline in baselines:
        for metric in metrics:
            pair = pd.concat(
                {
                    "model": wide.xs(model, level="method")[metric],
                    "baseline": wide.xs(baseline, level="method")[metric],
                },
                axis=1,
            ).dropna()
            groups = pair.groupby(level=list(by), sort=False, observed=True) if by else [((), pair)]
            for group, values in groups:
                group = group if isinstance(group, tuple) else (group,)
                diff = (values["model"] - values["baseline"]).to_numpy()
                k = len(diff)
                sd = float(diff.std(ddof=1)) if k > 1 else float("nan")
                lower = upper = float("nan")
                if k > 1:
                    var = sd**2 * (1 / k + (test_train_ratio or 0.0))
                    half = float(stats.t.ppf((1 + level) / 2, df=k - 1)) * np.sqrt(var)
                    lower, upper = float(diff.mean()) - half, float(diff.mean()) + half
                rows.append(
                    {
                        **dict(zip(by, group, strict=True)),
                        "baseline_method": baseline,
                        "metric": metric,
                        "n_splits": k,
                        "model": float(values["model"].mean()) if k else float("nan"),
                        "baseline": float(values["baseline"].mean()) if k else float("nan"),
                        "difference": float(diff.mean()) if k else float("nan"),
                        "sd": sd,
                        "lower": lower,
                        "upper": upper,
                    }
                )
    return pd.DataFrame(rows)


@dataclass
class _Predicted:
    """Predictions computed beforehand, in the shape :func:`ate_metrics` scores (a ``ShiftPredictor``)."""

    adata: AnnData
    shifts: pd.DataFrame

    def predict_shift(self, labels: Sequence[str], **kwargs: Any) -> pd.DataFrame:
        """The stored shifts of ``labels``."""
        return self.shifts.loc[list(labels)]


def score_predictions(
    predicted: pd.DataFrame, adata_train: AnnData, adata_test: AnnData, *, model_name: str, **metrics_kwargs: Any
) -> pd.DataFrame:
    """:func:`ate_metrics` of predicted shifts (labels x genes) beside the baselines fitted on ``adata_train``."""
    return ate_metrics(
        _Predicted(adata_train, predicted),
        adata_test,
        adata_train=adata_train,
        predictions=predicted,
        model_name=model_name,
        iwelbo=False,
        **metrics_kwargs,
    )


def fit_and_predict(
    train: AnnData,
    val: AnnData | None,
    labels: Sequence[str],
    *,
    model_kwargs: dict[str, Any] | None = None,
    train_kwargs: dict[str, Any] | None = None,
    n_samples: int = 30,
    predict_kwargs: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """Fit a :class:`~pertpyro.PerturbationModel` on ``train`` and predict the shifts of ``labels``.

    Parameters
    ----------
    train
        Training cells, set up with :func:`pertpyro.setup_anndata`.
    val
        Validation cells for early stopping (``None``: a fraction of ``train``, as ``train`` does).
    labels
        Labels to predict.
    model_kwargs
        Keyword arguments of :class:`~pertpyro.PerturbationModel`.
    train_kwargs
        Keyword arguments of :meth:`~pertpyro.PerturbationModel.train`.
    n_samples
        Posterior draws of :meth:`~pertpyro.PerturbationModel.predict_shift`.
    predict_kwargs
        Further keyword arguments of :meth:`~pertpyro.PerturbationModel.predict_shift` (e.g. ``{"basal": "control"}``).

    Returns
    -------
    Predicted shifts versus control, labels x genes.
    """
    model = PerturbationModel(train, **dict(model_kwargs or {}))
    model.train(validation_adata=val, **dict(train_kwargs or {}))
    return model.predict_shift(list(labels), n_samples=n_samples, **dict(predict_kwargs or {}))


def repeated_metrics(
    adata: AnnData,
    split: Callable[[int], pd.Series],
    seeds: Sequence[int],
    predict: Callable[[dict[str, AnnData], list[str]], pd.DataFrame],
    *,
    model_name: str = "PerturbationModel",
    done: dict[int, pd.DataFrame] | None = None,
    **metrics_kwargs: Any,
) -> pd.DataFrame:
    """Score the model and the baselines on several splits, each method on the same cells of a split.

    Parameters
    ----------
    adata
        The whole screen, set up with :func:`pertpyro.setup_anndata`.
    split
        ``split(seed)`` gives the ``"train"``/``"val"``/``"test"`` label per cell (e.g.
        ``lambda s: split_cells(adata, seed=s)``).
    seeds
        One split per seed.
    predict
        ``predict(parts, labels)``: fit on ``parts["train"]`` (``parts["val"]`` for early stopping) and return the
        predicted shifts of ``labels`` (labels x genes), e.g. built on :func:`fit_and_predict`.
    model_name
        Method name of the model's rows.
    done
        Summaries already computed for some seeds (e.g. the fitted run's split), which are not refitted.
    **metrics_kwargs
        Passed to :func:`ate_metrics` (``top_k``, ``reference``, ``baselines``...).

    Returns
    -------
    :func:`ate_metrics`'s summaries stacked, with a first column ``split`` (the seed).
    """
    if len(set(seeds)) != len(seeds) or not len(seeds):
        raise ValueError(f"seeds must be distinct and at least one, got {list(seeds)}.")
    done = dict(done or {})
    registry = get_registry(adata)
    tables = []
    for i, seed in enumerate(seeds):
        if seed in done:
            table = done[seed].copy()
        else:
            assignment = split(seed).reindex(adata.obs_names).to_numpy()
            parts = {name: adata[assignment == name].copy() for name in ("train", "val", "test")}
            labels = sorted({str(lab) for lab in perturbation_labels(parts["test"], registry)} - {registry.control})
            predicted = pd.DataFrame(predict(parts, labels))
            table = score_predictions(predicted, parts["train"], parts["test"], model_name=model_name, **metrics_kwargs)
        logger.info("Split %d of %d (seed %d) scored.", i + 1, len(seeds), seed)
        table.insert(0, "split", seed)
        tables.append(table)
    return pd.concat(tables, ignore_index=True)


def repeated_evaluation(
    adata: AnnData,
    split: Callable[[int], pd.Series],
    *,
    seed: int,
    n_splits: int,
    model_kwargs: dict[str, Any],
    train_kwargs: dict[str, Any],
    first: pd.DataFrame | None = None,
    n_samples: int = 30,
    test_train_ratio: float | None = None,
    **metrics_kwargs: Any,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The model refitted on ``n_splits`` random splits (seeds ``seed, seed + 1, ...``) and compared with the baselines.

    What ``pertpyro evaluate`` runs: the fitted run's split (``first``, its :func:`ate_metrics` summary) and
    ``n_splits - 1`` refits with the same settings on the splits of the next seeds.

    Parameters
    ----------
    adata
        The whole screen, set up with :func:`pertpyro.setup_anndata`.
    split
        ``split(seed)`` gives the ``"train"``/``"val"``/``"test"`` label per cell.
    seed
        Seed of the first split.
    n_splits
        Number of splits (at least 2 for an interval).
    model_kwargs, train_kwargs
        Settings of :class:`~pertpyro.PerturbationModel` and its ``train``.
    first
        :func:`ate_metrics` summary of the model already fitted on the split of ``seed`` (not refitted).
    n_samples
        Posterior draws of the refits' predictions.
    test_train_ratio
        ``n_test / n_train`` for the corrected interval columns ``lower_corrected`` and ``upper_corrected``
        (:func:`paired_differences`); ``None`` leaves them out.
    **metrics_kwargs
        Passed to :func:`ate_metrics` (``top_k``, ``reference``...).

    Returns
    -------
    The per-split summaries (:func:`repeated_metrics`) and the paired differences (:func:`paired_differences`, by
    subset and reference), model first.
    """
    if n_splits < 1:
        raise ValueError(f"n_splits must be a positive integer, got {n_splits}.")
    model_name = str(first["method"].iloc[0]) if first is not None else "PerturbationModel"

    def predict(parts: dict[str, AnnData], labels: list[str]) -> pd.DataFrame:
        return fit_and_predict(
            parts["train"],
            parts["val"] if parts["val"].n_obs else None,
            labels,
            model_kwargs=model_kwargs,
            train_kwargs=train_kwargs,
            n_samples=n_samples,
        )

    seeds = [seed + i for i in range(n_splits)]
    done = {seed: first} if first is not None else None
    per_split = repeated_metrics(adata, split, seeds, predict, model_name=model_name, done=done, **metrics_kwargs)
    paired = paired_differences(per_split, model=model_name)
    if test_train_ratio is not None:
        corrected = paired_differences(per_split, model=model_name, test_train_ratio=test_train_ratio)
        paired["lower_corrected"], paired["upper_corrected"] = corrected["lower"], corrected["upper"]
    return per_split, paired


def format_paired(paired: pd.DataFrame, *, seconds: float | None = None) -> str:
    """Markdown report of :func:`paired_differences` (what ``pertpyro evaluate`` prints after its table).

    Parameters
    ----------
    paired
        Output of :func:`paired_differences` or :func:`repeated_evaluation`.
    seconds
        Time the refits took, stated in the heading.

    Returns
    -------
    Markdown text.
    """
    k = int(paired["n_splits"].max()) if len(paired) else 0
    took = f"; refits took {seconds:.0f} s" if seconds is not None else ""
    head = (
        f"Model - baseline over {k} random splits, mean and 95% t interval of the paired differences "
        f"(for MSE, negative favours the model){took}\n"
    )
    show = paired.copy()
    show["interval"] = [f"[{lo:.3g}, {hi:.3g}]" for lo, hi in zip(show["lower"], show["upper"], strict=True)]
    columns = [c for c in ("subset", "reference") if c in show.columns]
    columns += ["baseline_method", "metric", "model", "baseline", "difference", "interval"]
    if "lower_corrected" in show.columns:
        show["corrected interval"] = [
            f"[{lo:.3g}, {hi:.3g}]" for lo, hi in zip(show["lower_corrected"], show["upper_corrected"], strict=True)
        ]
        columns.append("corrected interval")
    return head + format_table(show[columns])
