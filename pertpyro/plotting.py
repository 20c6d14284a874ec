"""Plots of training and of average treatment effects (matplotlib only).

Every function returns the :class:`matplotlib.figure.Figure` it drew on and writes it to ``save`` when given.
The ATE plots read the tidy table of :meth:`pertpyro.PerturbationModel.ate` (columns ``perturbation``, ``gene``,
``mean``, ``lower``, ``upper``); an effect is called *credible* when its credible interval excludes 0
(``lower > 0`` or ``upper < 0``).

Typical use::

    from pertpyro import plotting

    plotting.training_curves(model.history_, save="training.png")
    ate = model.ate(["STAT1", "IFNGR1"], n_samples=100, ci=0.9)
    plotting.ate_dotplot(ate, top_n=25)
    plotting.ate_forest(ate, "STAT1")
    plotting.volcano(ate, "IFNGR1")
    plotting.grn_graph(model.grn(), top_n=30)  # with grn=True
    plotting.null_qq(pertpyro.evaluation.null_pvalues(null_draws))  # negative controls
    plotting.efficacy_cells(model, "STAT1")  # per-cell posterior that the knockout took
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pandas as pd

from pertpyro.data._registry import get_counts, perturbation_labels
from pertpyro.data._stream import row_totals
from pertpyro.posterior import import_arviz

if TYPE_CHECKING:
    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from pertpyro.model import PerturbationModel

__all__ = ["ate_dotplot", "ate_forest", "efficacy_cells", "grn_graph", "null_qq", "ppc", "training_curves", "volcano"]

ATE_COLUMNS = ("perturbation", "gene", "mean", "lower", "upper")
HISTORY_COLUMNS = ("epoch", "train_loss")
SHIFT_LABEL = "ATE: shift of mean log1p(1e4 x / sum x)"
CREDIBLE_COLOR = "#b2182b"
NOT_CREDIBLE_COLOR = "#8c8c8c"


# ---------------------------------------------------------------------------------------------------- helpers
def _check_columns(df: Any, required: Sequence[str], what: str) -> pd.DataFrame:
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{what} must be a pandas DataFrame, got {type(df).__name__}.")
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(f"{what} is missing columns {missing}; it has {list(df.columns)}.")
    if df.empty:
        raise ValueError(f"{what} is empty.")
    return df


def _check_ate(ate: Any) -> pd.DataFrame:
    ate = _check_columns(ate, ATE_COLUMNS, "The ATE table")
    ate = ate.assign(perturbation=ate["perturbation"].astype(str), gene=ate["gene"].astype(str))
    if ate.duplicated(["perturbation", "gene"]).any():
        raise ValueError("The ATE table has several rows for one (perturbation, gene) pair.")
    return ate


def _select_perturbations(ate: pd.DataFrame, perturbations: str | Sequence[str] | None) -> list[str]:
    available = list(pd.unique(ate["perturbation"]))
    if perturbations is None:
        return available
    chosen = [perturbations] if isinstance(perturbations, str) else [str(p) for p in perturbations]
    unknown = [p for p in chosen if p not in available]
    if unknown:
        raise ValueError(f"Unknown perturbations {unknown}; the ATE table has {available}.")
    if not chosen:
        raise ValueError("perturbations is empty.")
    return chosen


def _one_perturbation(ate: pd.DataFrame, perturbation: str) -> pd.DataFrame:
    (label,) = _select_perturbations(ate, [perturbation])
    return ate[ate["perturbation"] == label].set_index("gene")


def _credible(lower: np.ndarray | pd.Series, upper: np.ndarray | pd.Series) -> np.ndarray:
    return (np.asarray(lower) > 0) | (np.asarray(upper) < 0)


def _check_top_n(top_n: int) -> None:
    if top_n < 1:
        raise ValueError(f"top_n must be positive, got {top_n}.")


def _axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=figsize, layout="constrained")
    return cast("Figure", ax.figure), ax


def _finish(fig: Figure, save: str | Path | None) -> Figure:
    if save is not None:
        path = Path(save)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=150, bbox_inches="tight")
    return fig


# ---------------------------------------------------------------------------------------------------- training
def training_curves(
    history: pd.DataFrame | Any,
    *,
    ax: Axes | None = None,
    log_scale: bool = False,
    save: str | Path | None = None,
) -> Figure:
    """Train and validation negative ELBO per cell against epoch.

    Parameters
    ----------
    history
        The DataFrame returned by :meth:`~pertpyro.PerturbationModel.train` (columns ``epoch``, ``train_loss`` and
        optionally ``val_loss``), or a model, whose ``history_`` is used.
    ax
        Axes to draw on (default: a new figure).
    log_scale
        Logarithmic y axis (helps when the first epochs dwarf the rest).
    save
        File to write the figure to (format from the suffix).

    Returns
    -------
    The figure.
    """
    if not isinstance(history, pd.DataFrame) and hasattr(history, "history_"):
        if history.history_ is None:
            raise ValueError("The model has no training history: call model.train() first.")
        history = history.history_
    history = _check_columns(history, HISTORY_COLUMNS, "The history")
    fig, ax = _axes(ax, (5.0, 3.5))
    # Several train() calls concatenate histories whose epochs restart at 0: number them consecutively.
    epoch = np.asarray(history["epoch"], dtype=float)
    if len(epoch) > 1 and np.any(np.diff(epoch) <= 0):
        epoch = np.arange(len(epoch), dtype=float)
    marker = "o" if len(epoch) <= 30 else None
    ax.plot(epoch, history["train_loss"], marker=marker, ms=3, label="train", color="#2166ac")
    if "val_loss" in history.columns and history["val_loss"].notna().any():
        ax.plot(epoch, history["val_loss"], marker=marker, ms=3, label="validation", color="#b2182b")
        best = int(np.nanargmin(history["val_loss"].to_numpy(dtype=float)))
        ax.axvline(epoch[best], color="0.6", ls=":", lw=1, label=f"best validation (epoch {epoch[best]:g})")
    if log_scale:
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("negative ELBO per cell (nats)")
    ax.set_title("Training")
    ax.legend(frameon=False)
    ax.grid(alpha=0.3)
    return _finish(fig, save)


# ---------------------------------------------------------------------------------------------------- ATE plots
def ate_dotplot(
    ate: pd.DataFrame,
    *,
    genes: Sequence[str] | None = None,
    top_n: int = 20,
    perturbations: str | Sequence[str] | None = None,
    vmax: float | None = None,
    cmap: str = "RdBu_r",
    ax: Axes | None = None,
    save: str | Path | None = None,
) -> Figure:
    """Dot plot of the mean effect of each perturbation (rows) on each gene (columns).

    The colour is the posterior mean shift on a diverging scale centred at 0; large dots with a black outline are
    credible effects (the interval excludes 0), small dots are not.

    Parameters
    ----------
    ate
        Tidy ATE table (``perturbation``, ``gene``, ``mean``, ``lower``, ``upper``).
    genes
        Genes to show, in this order; ``None`` picks the ``top_n`` genes with the largest ``max |mean|`` over the
        shown perturbations, ordered by that value.
    top_n
        Number of genes picked when ``genes`` is ``None``.
    perturbations
        Perturbations to show, in this order (default: all, in table order).
    vmax
        Colour scale limit, the scale runs from ``-vmax`` to ``vmax`` (default: the largest ``|mean|`` shown).
    cmap
        Diverging matplotlib colormap.
    ax
        Axes to draw on (default: a new figure sized to the grid).
    save
        File to write the figure to (format from the suffix).

    Returns
    -------
    The figure.
    """
    from matplotlib.colors import Normalize
    from matplotlib.lines import Line2D

    ate = _check_ate(ate)
    perts = _select_perturbations(ate, perturbations)
    ate = ate[ate["perturbation"].isin(perts)]
    if genes is None:
        _check_top_n(top_n)
        strength = ate.assign(abs_mean=ate["mean"].abs()).groupby("gene", sort=False)["abs_mean"].max()
        genes = list(strength.sort_values(ascending=False, kind="stable").index[:top_n])
    else:
        genes = [str(g) for g in genes]
        unknown = [g for g in genes if g not in set(ate["gene"])]
        if unknown:
            raise ValueError(f"Genes {unknown} are not in the ATE table (for the chosen perturbations).")
        if not genes:
            raise ValueError("genes is empty.")
    grid = {col: ate.pivot(index="perturbation", columns="gene", values=col).reindex(index=perts, columns=genes)
            for col in ("mean", "lower", "upper")}  # fmt: skip
    mean = grid["mean"].to_numpy(dtype=float)
    credible = _credible(grid["lower"].to_numpy(dtype=float), grid["upper"].to_numpy(dtype=float))
    if vmax is None:
        vmax = float(np.nanmax(np.abs(mean))) if np.isfinite(mean).any() else 1.0
        vmax = vmax if vmax > 0 else 1.0
    norm = Normalize(vmin=-vmax, vmax=vmax)

    n_p, n_g = len(perts), len(genes)
    fig, ax = _axes(ax, (max(4.5, 0.34 * n_g + 3.0), max(2.6, 0.38 * n_p + 1.9)))
    rows, cols = np.meshgrid(np.arange(n_p), np.arange(n_g), indexing="ij")
    shown = np.isfinite(mean)
    big, small = 150.0, 28.0
    for is_credible, size, edge in ((False, small, "0.55"), (True, big, "black")):
        pick = shown & (credible == is_credible)
        scatter = ax.scatter(
            cols[pick], rows[pick], c=mean[pick], s=size, cmap=cmap, norm=norm, edgecolors=edge, linewidths=0.8
        )
    cbar = fig.colorbar(scatter, ax=ax, shrink=0.9, pad=0.02, aspect=max(8, 3 * n_p))
    cbar.set_label("mean shift\nlog1p(1e4 x / sum x)")
    ax.set_xticks(np.arange(n_g), genes, rotation=90)
    ax.set_yticks(np.arange(n_p), perts)
    ax.set_xlim(-0.6, n_g - 0.4)
    ax.set_ylim(n_p - 0.5, -0.5)  # first perturbation on top
    ax.set_xticks(np.arange(n_g + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(n_p + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="0.92", lw=0.6)
    ax.tick_params(which="minor", length=0)
    ax.set_axisbelow(True)
    ax.set_xlabel("gene")
    ax.set_ylabel("perturbation")
    handles = [
        Line2D([], [], ls="", marker="o", ms=np.sqrt(big), mfc="white", mec="black", label="interval excludes 0"),
        Line2D([], [], ls="", marker="o", ms=np.sqrt(small), mfc="white", mec="0.55", label="interval covers 0"),
    ]
    ax.legend(handles=handles, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncols=2, frameon=False, fontsize=8)
    return _finish(fig, save)


def ate_forest(
    ate: pd.DataFrame,
    perturbation: str,
    *,
    top_n: int = 20,
    ax: Axes | None = None,
    save: str | Path | None = None,
) -> Figure:
    """Forest plot of one perturbation: posterior mean and credible interval of its strongest effects.

    Parameters
    ----------
    ate
        Tidy ATE table (``perturbation``, ``gene``, ``mean``, ``lower``, ``upper``).
    perturbation
        Label to show.
    top_n
        Number of genes shown, those with the largest ``|mean|``, strongest on top.
    ax
        Axes to draw on (default: a new figure).
    save
        File to write the figure to (format from the suffix).

    Returns
    -------
    The figure; credible effects (interval excludes 0) in red, others in grey.
    """
    ate = _check_ate(ate)
    _check_top_n(top_n)
    sub = _one_perturbation(ate, perturbation)
    order = sub["mean"].abs().sort_values(ascending=False, kind="stable").index[:top_n]
    sub = sub.loc[order]
    n = len(sub)
    fig, ax = _axes(ax, (4.8, max(2.5, 0.26 * n + 1.2)))
    y = np.arange(n)
    credible = _credible(sub["lower"], sub["upper"])
    colors = np.where(credible, CREDIBLE_COLOR, NOT_CREDIBLE_COLOR)
    ax.hlines(y, sub["lower"], sub["upper"], colors=list(colors), lw=1.6)
    ax.scatter(sub["mean"], y, c=colors, s=22, zorder=3)
    ax.axvline(0.0, color="black", lw=0.8)
    ax.set_yticks(y, list(sub.index))
    ax.set_ylim(n - 0.5, -0.5)  # strongest on top
    ax.set_xlabel(SHIFT_LABEL)
    ax.set_title(f"{perturbation}: top {n} genes by |mean|")
    ax.grid(axis="x", alpha=0.3)
    return _finish(fig, save)


def volcano(
    ate: pd.DataFrame,
    perturbation: str,
    *,
    label_top: int = 10,
    ax: Axes | None = None,
    save: str | Path | None = None,
) -> Figure:
    """Volcano plot of one perturbation: effect against how clearly its interval avoids 0.

    The y axis is ``|(lower + upper) / 2| / ((upper - lower) / 2)``: the distance of the interval's centre from 0
    in units of its half-width. It is exactly 1 where the interval touches 0 (dashed line), above 1 for credible
    effects; for a Gaussian posterior and ``ci=0.9`` it is ``|z| / 1.645``. Genes with a zero-width interval
    are not shown.

    Parameters
    ----------
    ate
        Tidy ATE table (``perturbation``, ``gene``, ``mean``, ``lower``, ``upper``).
    perturbation
        Label to show.
    label_top
        Name the credible genes with the largest ``|mean|``, at most this many (0: none).
    ax
        Axes to draw on (default: a new figure).
    save
        File to write the figure to (format from the suffix).

    Returns
    -------
    The figure.
    """
    ate = _check_ate(ate)
    sub = _one_perturbation(ate, perturbation)
    lower, upper = sub["lower"].to_numpy(dtype=float), sub["upper"].to_numpy(dtype=float)
    half = (upper - lower) / 2
    centre = np.abs(upper + lower) / 2
    score = np.full(len(sub), np.nan)
    np.divide(centre, half, out=score, where=half > 0)
    mean = sub["mean"].to_numpy(dtype=float)
    credible = _credible(lower, upper)
    fig, ax = _axes(ax, (5.0, 4.0))
    for pick, color, name in ((~credible, NOT_CREDIBLE_COLOR, "covers 0"), (credible, CREDIBLE_COLOR, "excludes 0")):
        ax.scatter(mean[pick], score[pick], s=12, c=color, alpha=0.8, label=f"interval {name} ({pick.sum()})")
    ax.axhline(1.0, color="black", ls="--", lw=0.8)
    ax.axvline(0.0, color="0.6", lw=0.6)
    if label_top > 0:
        candidates = np.flatnonzero(credible & np.isfinite(score))
        for i in candidates[np.argsort(-np.abs(mean[candidates]), kind="stable")][:label_top]:
            ax.annotate(sub.index[i], (mean[i], score[i]), xytext=(3, 3), textcoords="offset points", fontsize=7)
    ax.set_xlabel(SHIFT_LABEL)
    ax.set_ylabel("|interval centre| / interval half-width")
    ax.set_title(f"{perturbation}")
    ax.legend(frameon=False, fontsize=8)
    ax.grid(alpha=0.3)
    return _finish(fig, save)


# ---------------------------------------------------------------------------------------------------- posterior
def ppc(
    idata: Any,
    *,
    var_names: Sequence[str] = ("gene_mean", "zero_fraction"),
    num_pp_samples: int | None = 50,
    figsize: tuple[float, float] | None = None,
    save: str | Path | None = None,
) -> Figure:
    """Posterior predictive check: distribution over genes of each summary, observed vs replicated data.

    Parameters
    ----------
    idata
        ``arviz.InferenceData`` from ``model.to_inference_data(heldout=cells)`` (groups ``posterior_predictive`` and
        ``observed_data``).
    var_names
        Summaries to show, one panel each (``gene_mean``: mean ``log1p(1e4 x / sum x)`` per gene; ``zero_fraction``:
        fraction of zero counts per gene).
    num_pp_samples
        Replicates drawn in each panel (``None``: all).
    figsize
        Figure size (default: 4.5 x 3.5 inches per panel).
    save
        File to write the figure to.

    Returns
    -------
    The figure.
    """
    import matplotlib.pyplot as plt

    az = import_arviz()
    groups = set(getattr(idata, "groups", list)())
    if not {"posterior_predictive", "observed_data"} <= groups:
        raise ValueError(
            "idata has no posterior predictive check: call model.to_inference_data(heldout=cells) to add one."
        )
    var_names = [str(v) for v in var_names]
    missing = [v for v in var_names if v not in idata.posterior_predictive]
    if not var_names or missing:
        raise ValueError(f"Unknown var_names {missing}; idata has {list(idata.posterior_predictive.data_vars)}.")
    fig, axes = plt.subplots(1, len(var_names), figsize=figsize or (4.5 * len(var_names), 3.5), squeeze=False)
    total = idata.posterior_predictive.sizes["chain"] * idata.posterior_predictive.sizes["draw"]
    n_shown = total if num_pp_samples is None else min(int(num_pp_samples), total)
    for ax, name in zip(axes[0], var_names, strict=True):
        az.plot_ppc(idata, var_names=[name], num_pp_samples=n_shown, ax=ax, random_seed=0)
        ax.set_title(name.replace("_", " ") + " per gene")
    fig.tight_layout()
    return _finish(fig, save)


# ---------------------------------------------------------------------------------------------------- networks
GRN_COLUMNS = ("source", "target", "prob", "weight")


def grn_graph(
    edges: pd.DataFrame,
    *,
    top_n: int = 40,
    min_prob: float = 0.5,
    ax: Axes | None = None,
    save: str | Path | None = None,
) -> Figure:
    """Directed graph of the most probable edges of :meth:`pertpyro.PerturbationModel.grn`.

    Regulators (nodes with an outgoing edge) sit on an inner circle, their target genes on an outer one; an arrow
    is red when the knockout of the source lowers the target (``weight > 0``: the regulator activates it), blue
    when it raises it, and its width grows with the posterior inclusion probability.

    Parameters
    ----------
    edges
        Edge table with columns ``source``, ``target``, ``prob``, ``weight``.
    top_n
        Draw at most this many edges, the most probable first.
    min_prob
        Leave out edges with a lower posterior inclusion probability.
    ax
        Axes to draw on (default: a new figure).
    save
        File to write the figure to.

    Returns
    -------
    The figure.
    """
    edges = _check_columns(edges, GRN_COLUMNS, "grn edge table")
    if top_n < 1:
        raise ValueError(f"top_n must be at least 1, got {top_n}.")
    if not 0.0 <= min_prob <= 1.0:
        raise ValueError(f"min_prob must lie in [0, 1], got {min_prob}.")
    shown = edges[edges["prob"] >= min_prob].sort_values("prob", ascending=False, kind="stable").head(top_n)
    fig, ax = _axes(ax, (6.0, 6.0))
    ax.set_axis_off()
    if shown.empty:
        ax.set_title(f"no edge with inclusion probability >= {min_prob}")
        return _finish(fig, save)
    regulators = list(dict.fromkeys(shown["source"].astype(str)))
    targets = [g for g in dict.fromkeys(shown["target"].astype(str)) if g not in regulators]
    position = _ring(regulators, 1.0) | _ring(targets, 2.0)
    for src, tgt, prob, weight in shown[list(GRN_COLUMNS)].itertuples(index=False):
        (x0, y0), (x1, y1) = position[str(src)], position[str(tgt)]
        ax.annotate(
            "",
            xy=(x1, y1),
            xytext=(x0, y0),
            arrowprops={
                "arrowstyle": "-|>",
                "color": CREDIBLE_COLOR if weight > 0 else "#2166ac",
                "lw": 0.5 + 2.5 * float(prob),
                "alpha": 0.75,
                "shrinkA": 6,
                "shrinkB": 6,
            },
        )
    for names, color, size in ((regulators, "#fdb863", 9), (targets, "#d9d9d9", 7)):
        xy = np.array([position[n] for n in names]).reshape(-1, 2)
        ax.scatter(xy[:, 0], xy[:, 1], s=120, c=color, edgecolors="black", linewidths=0.5, zorder=3)
        for name, (x, y) in zip(names, xy, strict=True):
            ax.annotate(name, (x, y), xytext=(0, 7), textcoords="offset points", ha="center", fontsize=size)
    ax.set_xlim(-2.6, 2.6)
    ax.set_ylim(-2.6, 2.6)
    ax.set_aspect("equal")
    ax.set_title(f"{len(shown)} edges with inclusion >= {min_prob} (red: knockout lowers target)")
    return _finish(fig, save)


def null_qq(
    pvalues: np.ndarray | pd.Series | dict[str, np.ndarray],
    *,
    ax: Axes | None = None,
    save: str | Path | None = None,
) -> Figure:
    """QQ plot of the null pseudo-targets' p-values against the uniform, on ``-log10`` scales.

    Points of a calibrated model lie on the diagonal; points above it are null effects called too often.

    Parameters
    ----------
    pvalues
        Two-sided p-values of the null pseudo-targets' genes (:func:`pertpyro.evaluation.null_pvalues`), or a
        mapping of a name (e.g. ``"raw"``, ``"calibrated"``) to such p-values, one series each.
    ax
        Axes to draw on (default: a new figure).
    save
        File to write the figure to.

    Returns
    -------
    The figure.
    """
    series = dict(pvalues) if isinstance(pvalues, dict) else {"null pseudo-targets": pvalues}
    fig, ax = _axes(ax, (4.5, 4.5))
    top = 1.0
    for name, values in series.items():
        p = np.sort(np.asarray(values, dtype=np.float64).ravel())
        if p.size == 0 or not np.all((p >= 0) & (p <= 1)):
            raise ValueError(f"p-values of {name!r} must be a non-empty array of numbers in [0, 1].")
        expected = -np.log10((np.arange(1, p.size + 1) - 0.5) / p.size)
        observed = -np.log10(np.maximum(p, 1e-300))
        ax.scatter(expected, observed, s=8, alpha=0.7, label=f"{name} ({p.size} genes)")
        top = max(top, float(expected.max()), float(min(observed.max(), 10.0)))
    ax.plot([0, top], [0, top], color="black", lw=0.8, ls="--")
    ax.set_xlabel("expected -log10 p (uniform)")
    ax.set_ylabel("observed -log10 p")
    ax.set_title("null pseudo-targets")
    ax.legend(frameon=False, fontsize=8)
    return _finish(fig, save)


# ---------------------------------------------------------------------------------------------------- efficacy
def efficacy_cells(
    model: PerturbationModel,
    target: str,
    *,
    adata: AnnData | None = None,
    probabilities: pd.Series | None = None,
    n_samples: int = 30,
    seed: int = 0,
    figsize: tuple[float, float] | None = None,
    save: str | Path | None = None,
) -> Figure:
    """Each cell's posterior that the knockout of ``target`` took, against its depth and its target gene's expression.

    One point per cell labelled ``target``, coloured by guide when a guide column is registered. Left: the total
    counts of the cell (log scale); right (when ``target`` is a measured gene): its ``log1p(1e4 x / sum x)`` of the
    target gene. Responders of a knockout that lowers its own gene sit low on the right panel; a posterior that
    follows depth alone would show as a trend on the left one.

    Parameters
    ----------
    model
        A trained :class:`~pertpyro.PerturbationModel` with the ``efficacy`` block.
    target
        A perturbation label of the cells to show (e.g. ``"STAT1"``).
    adata
        Cells to show (default: the model's training data).
    probabilities
        Precomputed ``model.efficacy_probability(per="cell", adata=adata)`` (default: computed here).
    n_samples, seed
        Importance samples and seed of the posterior when it is computed here.
    figsize
        Figure size (default: 4.5 x 3.5 inches per panel).
    save
        File to write the figure to.

    Returns
    -------
    The figure.
    """
    import matplotlib.pyplot as plt

    cells = model.adata if adata is None else adata
    registry = model.registry
    labels = perturbation_labels(cells, registry)
    rows = np.flatnonzero(labels == str(target))
    if rows.size == 0:
        raise ValueError(f"No cell is labelled {target!r} in obs[{registry.perturbation_key!r}].")
    if probabilities is None:
        probabilities = model.efficacy_probability(per="cell", adata=cells, n_samples=n_samples, seed=seed)
    prob = pd.Series(probabilities).reindex(cells.obs_names[rows]).to_numpy(dtype=np.float64)
    if np.isnan(prob).any():
        raise ValueError(f"probabilities lack {int(np.isnan(prob).sum())} of the {rows.size} cells of {target!r}.")
    counts = get_counts(cells, registry)[rows]
    depth = row_totals(counts)
    panels = [("total counts", depth, True)]
    if str(target) in registry.genes:
        column = counts[:, registry.genes.index(str(target))]
        own = np.asarray(column.toarray() if hasattr(column, "toarray") else column, dtype=np.float64).ravel()
        panels.append((f"{target} log1p(1e4 x / sum x)", np.log1p(1e4 * own / depth), False))
    if registry.guide_key is not None and registry.guide_key in cells.obs:
        groups = cells.obs[registry.guide_key].astype(str).to_numpy()[rows]
    else:
        groups = np.full(rows.size, str(target))
    fig, axes = plt.subplots(
        1, len(panels), figsize=figsize or (4.5 * len(panels), 3.5), squeeze=False, layout="constrained"
    )
    for ax, (name, x, log_scale) in zip(axes[0], panels, strict=True):
        for group in sorted(set(groups)):
            mask = groups == group
            ax.scatter(x[mask], prob[mask], s=8, alpha=0.6, label=f"{group} ({int(mask.sum())})")
        if log_scale:
            ax.set_xscale("log")
        ax.set_xlabel(name)
        ax.set_ylabel("P(knockout took | cell)")
        ax.set_ylim(-0.03, 1.03)
    axes[0][-1].legend(frameon=False, fontsize=8, title="guide" if registry.guide_key else None)
    fig.suptitle(f"{target}: {rows.size} cells")
    return _finish(fig, save)


def _ring(names: Sequence[str], radius: float) -> dict[str, tuple[float, float]]:
    angles = np.linspace(0.0, 2.0 * np.pi, num=max(len(names), 1), endpoint=False) + np.pi / 2
    return {n: (radius * np.cos(a), radius * np.sin(a)) for n, a in zip(names, angles, strict=False)}
