"""cell-eval (Arc Institute's Virtual Cell Challenge evaluator) on generated cells, for the model and the baselines.

cell-eval scores *cells*: it compares a predicted AnnData with the real held-out cells through differential
expression (Wilcoxon tests of each perturbation against the control cells) and distances of mean profiles. Every
method is handed the same source cells, the held-out control cells, and generates for each held-out label as many
cells as the test split holds:

- the model through :meth:`~pertpyro.PerturbationModel.predict_cells` (sampled counts of the posterior predictive;
  its control cells are generated the same way, under ``do(perturbation=control)``);
- a baseline (a shift per label and gene on ``log1p(1e4 x / sum x)``, :mod:`pertpyro.evaluation._baselines`)
  through :func:`shifted_counts`: the shift becomes a per-gene rate ratio, and each source cell's counts are thinned
  (ratio below one) or topped up with Poisson counts (ratio above one); its control cells are the source cells.

Both AnnData hold ``log1p(1e4 x / sum x)`` in ``X`` (pertpyro's scale, which cell-eval takes as log-normalised) and
the integer counts in ``layers["counts"]``. cell-eval is an optional dependency (``pip install 'pertpyro[eval]'``).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata import AnnData

from pertpyro.data._registry import Registry, get_registry, perturbation_labels
from pertpyro.data._statistics import log_normalise
from pertpyro.evaluation._baselines import BASELINES
from pertpyro.evaluation._runner import format_table
from pertpyro.model._cells import take_cells

logger = logging.getLogger(__name__)

CELL_EVAL_INSTALL = "pip install 'pertpyro[eval]'  (or: pip install 'cell-eval>=0.8')"
"""How to get cell-eval, as :func:`cell_eval_report` and ``pertpyro evaluate`` print it."""

CELL_EVAL_BASELINES = ("training_mean", "shrunk_training_mean", "no_change")
"""Baselines generated and scored beside the model."""

COUNTS_LAYER = "counts"
"""Layer of the written AnnData holding the integer counts (``X`` holds ``log1p(1e4 x / sum x)``)."""

SUMMARY_METRICS = (
    "de_nsig_counts_real",
    "de_nsig_counts_pred",
    "de_sig_genes_recall",
    "overlap_at_N",
    "precision_at_N",
    "de_direction_match",
    "pr_auc",
    "pearson_delta",
    "mse",
    "mae",
    "discrimination_score_l1",
)
"""cell-eval metrics printed in the report (``cell_eval.csv`` holds every metric of the profile)."""


class CellGenerator(Protocol):
    """A model that generates cells: its registry and :meth:`~pertpyro.PerturbationModel.predict_cells`."""

    registry: Registry

    def predict_cells(self, cells: AnnData, perturbations: Sequence[str], *, seed: int) -> AnnData:
        """Sampled counts of ``cells`` under one perturbation label each."""
        ...


def cell_eval_installed() -> bool:
    """Whether the optional dependency ``cell-eval`` can be imported."""
    return importlib.util.find_spec("cell_eval") is not None


def _dense_counts(adata: AnnData, registry: Registry) -> np.ndarray:
    x = adata.X if registry.layer is None else adata.layers[registry.layer]
    x = x.toarray() if sp.issparse(x) else np.asarray(x)
    return x.astype(np.float64)


def _scored(counts: np.ndarray, labels: Sequence[str], perturbation_key: str, genes: Sequence[str]) -> AnnData:
    """AnnData for cell-eval: ``X`` on ``log1p(1e4 x / sum x)``, integer counts in ``layers["counts"]``."""
    lognorm = log_normalise(torch.from_numpy(np.asarray(counts, dtype=np.float32))).numpy()
    obs = pd.DataFrame({perturbation_key: pd.Categorical([str(lab) for lab in labels])})
    obs.index = pd.Index([f"cell{i}" for i in range(len(labels))])
    out = AnnData(lognorm.astype(np.float32), obs=obs, var=pd.DataFrame(index=[str(g) for g in genes]))
    out.layers[COUNTS_LAYER] = np.asarray(counts, dtype=np.float32)
    return out


def shift_ratios(
    counts: np.ndarray, shifts: np.ndarray, *, seed: int = 0, n_steps: int = 12, width: float = 30.0
) -> np.ndarray:
    """Per-gene rate ratios under which :func:`shifted_counts` moves the cells' mean ``log1p`` expression by each shift.

    A starting ratio ``expm1(max(m + shift, 0)) / expm1(m)`` (``m`` the cells' mean ``log1p(1e4 x / sum x)`` per
    gene) is right for well-detected genes (``e^shift``) and sparse ones (rate-proportional), not in between, nor
    where thinning empties cells. It is refined by bisection on ``log r`` within a factor ``width`` of it: each step
    draws the shifted counts of all ``cells`` (same seed every step) and compares their mean ``log1p`` with the
    target, with each cell's depth fixed (so genes do not interact and bisection is sound) at its value times the
    label's depth factor ``sum_g r_g p_g`` (``p`` the genes' shares of the counts; 1 in a first round, the first
    round's ratios in a second). A gene never detected in the cells, a zero shift and a NaN shift keep ``r = 1``.

    Parameters
    ----------
    counts
        Counts of the source cells ``(cells, G)``.
    shifts
        Shifts on ``log1p(1e4 x / sum x)`` ``(labels, G)``.
    seed
        Seed of the draws.
    n_steps
        Bisection steps.
    width
        Half-width of the bracket, as a factor on the starting ratio.

    Returns
    -------
    Ratios ``(labels, G)``.
    """
    depth = np.maximum(counts.sum(1, keepdims=True), 1.0)
    base = np.log1p(1e4 * counts / depth).mean(0)  # (G,)
    target = np.maximum(base + np.nan_to_num(shifts, nan=0.0), 0.0)  # (L, G)
    active = (base > 0) & np.isfinite(shifts) & (target > 0)
    start = np.log(np.where(active, np.expm1(target) / np.where(base > 0, np.expm1(base), 1.0), 1.0))
    rates = depth * (counts.sum(0) / depth.sum())[None]
    share = counts.sum(0) / max(counts.sum(), 1.0)
    scale = np.ones((len(target), 1))  # each label's depth factor sum_g r_g share_g: 1, then from the first round
    for _ in range(2):  # within a round the genes are independent (depth fixed), so bisection is sound
        lo, hi = start - np.log(width), start + np.log(width)
        for _ in range(n_steps):
            mid = (lo + hi) / 2
            rng = np.random.default_rng(seed)
            for label in range(len(target)):
                drawn = shifted_counts(counts, np.exp(mid[label]), rates, rng)
                value = np.log1p(1e4 * drawn / (depth * scale[label])).mean(0)
                below = value < target[label]
                lo[label], hi[label] = np.where(below, mid[label], lo[label]), np.where(below, hi[label], mid[label])
        ratio = np.exp((lo + hi) / 2)
        scale = (ratio * share).sum(1, keepdims=True)
    ratio = np.where((base > 0) & np.isfinite(shifts) & (target <= 0), 0.0, ratio)
    return np.where((base > 0) & np.isfinite(shifts) & (shifts != 0), ratio, 1.0)


def shifted_counts(counts: np.ndarray, ratio: np.ndarray, rates: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Counts of source cells with every gene's rate multiplied by ``ratio``, keeping each cell's own noise.

    Where ``ratio <= 1`` each count is thinned, ``Binomial(x, ratio)``; where ``ratio > 1`` Poisson counts of mean
    ``rate * (ratio - 1)`` are added, ``rate`` the cell's expected count of the gene (the source cells' mean
    expression at the cell's depth). Either way the counts' mean is ``ratio`` times the source's.

    Parameters
    ----------
    counts
        Source counts ``(cells, G)``.
    ratio
        Rate ratio per cell and gene (broadcastable to ``counts``).
    rates
        Expected count of each gene in each source cell ``(cells, G)``.
    rng
        Random generator.

    Returns
    -------
    Integer-valued counts ``(cells, G)``.
    """
    ratio = np.broadcast_to(ratio, counts.shape)
    thinned = rng.binomial(counts.astype(np.int64), np.clip(ratio, 0.0, 1.0))
    added = counts + rng.poisson(rates * np.clip(ratio - 1.0, 0.0, None))
    return np.where(ratio <= 1.0, thinned, added).astype(np.float64)


def evaluation_cells(
    model: CellGenerator | None,
    adata_train: AnnData,
    adata_test: AnnData,
    *,
    baselines: Sequence[str] = CELL_EVAL_BASELINES,
    model_name: str = "pertpyro",
    seed: int = 0,
) -> tuple[AnnData, dict[str, AnnData]]:
    """The real held-out cells and, per method, generated cells in the form cell-eval reads.

    Every method starts from the same source cells: for each perturbed label of ``adata_test`` with ``n`` test
    cells, ``n`` of the test control cells drawn with replacement (``seed``); the control cells are all test
    control cells. The model generates from them with ``predict_cells``; each baseline applies its predicted shift
    with :func:`shifted_counts`.

    Parameters
    ----------
    model
        A trained model with ``predict_cells`` (``None``: baselines only).
    adata_train
        Training cells (the baselines' fits).
    adata_test
        Held-out cells, set up with :func:`pertpyro.setup_anndata`, with control cells.
    baselines
        Names in :data:`~pertpyro.evaluation.BASELINES`.
    model_name
        Name of the model's entry.
    seed
        Seed of the source cells and of the draws.

    Returns
    -------
    The real AnnData and ``{method: AnnData}``: ``obs[perturbation_key]`` the label, ``X`` on
    ``log1p(1e4 x / sum x)``, ``layers["counts"]`` integer counts.
    """
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise ValueError(f"Unknown baselines {unknown}; known: {list(BASELINES)}.")
    registry = get_registry(adata_test)
    genes = [str(g) for g in registry.genes]
    test_labels = np.asarray(perturbation_labels(adata_test, registry)).astype(str)
    control_rows = np.flatnonzero(test_labels == registry.control)
    if len(control_rows) == 0:
        raise ValueError(f"adata_test has no control cells (label {registry.control!r}) to generate cells from.")
    counts_real = _dense_counts(adata_test, registry)
    real = _scored(counts_real, test_labels.tolist(), registry.perturbation_key, genes)
    labels = [lab for lab in dict.fromkeys(test_labels.tolist()) if lab != registry.control]
    if not labels:
        raise ValueError("adata_test has no perturbed cells to evaluate.")
    rng = np.random.default_rng(seed)
    per_label = [rng.choice(control_rows, size=int((test_labels == lab).sum())) for lab in labels]
    source_rows = np.concatenate([*per_label, control_rows])
    cell_labels = [lab for lab, rows in zip(labels, per_label, strict=True) for _ in rows]
    cell_labels += [registry.control] * len(control_rows)

    preds: dict[str, AnnData] = {}
    if model is not None:
        generated = model.predict_cells(take_cells(adata_test, source_rows), cell_labels, seed=seed)
        values = generated.X.toarray() if sp.issparse(generated.X) else np.asarray(generated.X)
        preds[model_name] = _scored(values, cell_labels, registry.perturbation_key, genes)
    source = counts_real[control_rows]
    profile = source.sum(0) / max(source.sum(), 1.0)  # mean expression of the source cells, per unit depth
    counts_source = counts_real[source_rows]
    rates = counts_source.sum(1, keepdims=True) * profile[None]
    label_index = {lab: i for i, lab in enumerate(labels)}
    for name in baselines:
        shifts = pd.DataFrame(BASELINES[name](adata_train, labels)).reindex(index=labels, columns=genes)
        ratios = np.vstack([shift_ratios(source, shifts.to_numpy(), seed=seed), np.ones(len(genes))])  # last: control
        rows = np.array([label_index.get(lab, len(labels)) for lab in cell_labels])
        counts = shifted_counts(counts_source, ratios[rows], rates, np.random.default_rng([seed, len(preds)]))
        preds[name] = _scored(counts, cell_labels, registry.perturbation_key, genes)
    return real, preds


def write_cell_eval_inputs(real: AnnData, preds: Mapping[str, AnnData], folder: str | Path) -> dict[str, Path]:
    """Write ``real.h5ad`` and ``pred_<method>.h5ad`` to ``folder`` (the files cell-eval's CLI also reads), sparse.

    Returns
    -------
    Path of each file by name (``"real"`` and the methods).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"real": folder / "real.h5ad"} | {name: folder / f"pred_{name}.h5ad" for name in preds}
    for name, adata in {"real": real, **preds}.items():  # stored sparse: most counts are zero
        stored = AnnData(sp.csr_matrix(adata.X), obs=adata.obs, var=adata.var)
        stored.layers[COUNTS_LAYER] = sp.csr_matrix(adata.layers[COUNTS_LAYER])
        stored.write_h5ad(paths[name])
    return paths


def run_cell_eval(
    real: AnnData,
    preds: Mapping[str, AnnData],
    folder: str | Path,
    *,
    control: str,
    perturbation_key: str,
    profile: str = "full",
    num_threads: int = -1,
) -> pd.DataFrame:
    """cell-eval's ``MetricsEvaluator`` on each method's cells against the real cells; its aggregate table.

    The real cells' differential expression is computed once and reused for every method. cell-eval writes its
    per-perturbation results and DE tables under ``folder/<method>/``.

    Parameters
    ----------
    real
        Real held-out cells (:func:`evaluation_cells`).
    preds
        Generated cells by method.
    folder
        Output folder of cell-eval's files.
    control
        Control label.
    perturbation_key
        Column of ``obs`` with the labels.
    profile
        cell-eval metric profile (``"full"``: every DE and AnnData metric).
    num_threads
        Threads of its DE (``-1``: every available core).

    Returns
    -------
    One row per method: the mean over perturbations of every metric (cell-eval's aggregate ``mean`` row).

    Raises
    ------
    ImportError
        cell-eval is not installed (the message says how to get it).
    """
    if not cell_eval_installed():
        raise ImportError(f"cell-eval is not installed; get it with: {CELL_EVAL_INSTALL}")
    evaluator_class = importlib.import_module("cell_eval").MetricsEvaluator  # optional: loaded only when used

    folder = Path(folder)
    rows, de_real = [], None
    for name, pred in preds.items():
        outdir = folder / name
        evaluator = evaluator_class(
            adata_pred=pred.copy(),
            adata_real=real.copy(),
            de_real=de_real,
            control_pert=control,
            pert_col=perturbation_key,
            num_threads=num_threads,
            outdir=str(outdir),
        )
        _, agg = evaluator.compute(profile=profile, write_csv=True)
        if de_real is None:
            de_real = str(outdir / "real_de.csv")
        table = agg.to_pandas().set_index("statistic")
        rows.append(table.loc["mean"].rename(name))
    out = pd.DataFrame(rows)
    out.index.name = "method"
    return out.reset_index()


def cell_eval_report(
    model: CellGenerator,
    adata_train: AnnData,
    adata_test: AnnData,
    folder: str | Path,
    *,
    seed: int = 0,
    num_threads: int = -1,
) -> tuple[pd.DataFrame | None, str]:
    """cell-eval's full profile for the model and the baselines, as ``pertpyro evaluate`` reports it.

    Generates the cells (:func:`evaluation_cells`), writes them to ``folder`` (:func:`write_cell_eval_inputs`), runs
    cell-eval on each method (:func:`run_cell_eval`, its files under ``folder``) and writes the aggregate table to
    ``folder/cell_eval.csv``. Without cell-eval installed, nothing is generated and the text says how to get it.

    Returns
    -------
    The aggregate table (one row per method; ``None`` without cell-eval) and a Markdown section for the report.
    """
    title = "cell-eval (full profile; generated cells from the held-out control cells, mean over perturbations)"
    if not cell_eval_installed():
        logger.warning("cell-eval is not installed; skipping its section. Get it with: %s", CELL_EVAL_INSTALL)
        return None, f"{title}: skipped, cell-eval is not installed. Get it with: {CELL_EVAL_INSTALL}\n"
    registry = get_registry(adata_test)
    real, preds = evaluation_cells(model, adata_train, adata_test, seed=seed)
    write_cell_eval_inputs(real, preds, folder)
    table = run_cell_eval(
        real,
        preds,
        folder,
        control=registry.control,
        perturbation_key=registry.perturbation_key,
        num_threads=num_threads,
    )
    table.to_csv(Path(folder) / "cell_eval.csv", index=False)
    shown = ["method", *[m for m in SUMMARY_METRICS if m in table.columns]]
    return table, f"{title}\n{format_table(table[shown])}"
