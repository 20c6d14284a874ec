"""Data efficiency on the Papalexi screen: held-out effects against the number of training cells per knockout.

For each seed, the cells are split 80/20 at random, stratified by perturbation (``split_cells(fractions=(0.8, 0,
0.2), seed=seed)``). The test cells stay fixed for that seed; the training cells of each knockout are subsampled to
``n`` (a nested subsample: the first ``n`` of one random order per knockout, so ``n=25`` is part of ``n=50``), and the
training controls are kept whole. The model (defaults of ``PerturbationModel`` and ``train``, seed = the split's
seed), the per-knockout training mean and the empirical-Bayes shrunk training mean are fitted on the same subsample
and scored on the same test cells by ``pertpyro.evaluation.ate_metrics``. The paired difference model - baseline is
summarised over the seeds with a Student-t 95% interval (``pertpyro.evaluation.paired_differences``).

Every fit appends its rows to ``benchmarks/results/data_efficiency.csv`` (a re-run skips the (seed, n) pairs already
there, so a run can be spread over several commands); the result file and the figure are written from that table::

    python benchmarks/data_efficiency.py --seeds 0 1 2 --cells 10 25 50 100 all
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import torch
from _results import ROOT, _results_dir, frame_table, write_result

import pertpyro
from pertpyro.data._registry import get_registry
from pertpyro.evaluation import paired_differences, split_cells
from pertpyro.evaluation._repeated import fit_and_predict, score_predictions

matplotlib.use("Agg")
import matplotlib.pyplot as plt

NAME = "data_efficiency"
FIGURE = "docs/figures/data_efficiency.png"
BASELINES = ("training_mean", "shrunk_training_mean")
MODEL = "pertpyro PerturbationModel"
LABELS = {MODEL: "pertpyro", "training_mean": "training mean", "shrunk_training_mean": "shrunk training mean"}


def subsample(train: pd.Series, labels: pd.Series, n: int | None, control: str, seed: int) -> pd.Index:
    """Training cells: every control, and the first ``n`` of a random order of each knockout's training cells."""
    rng = np.random.default_rng([seed, 1])
    keep = []
    for label in sorted(labels[train].unique()):
        cells = labels.index[train & (labels == label)]
        if label != control and n is not None:
            cells = cells[rng.permutation(len(cells))[:n]]
        keep.append(cells)
    return pd.Index(np.concatenate(keep))


def run_one(
    adata, seed: int, n: int | None, model_kwargs: dict, train_kwargs: dict, predict_kwargs: dict
) -> pd.DataFrame:
    split = split_cells(adata, fractions=(0.8, 0.0, 0.2), seed=seed)
    control = get_registry(adata).control
    labels = adata.obs["perturbation"].astype(str)
    cells = subsample(split == "train", labels, n, control, seed)
    train = adata[adata.obs_names.isin(cells)].copy()
    test = adata[(split == "test").to_numpy()].copy()
    test_labels = sorted(set(test.obs["perturbation"].astype(str)) - {control})
    start = time.perf_counter()
    predicted = fit_and_predict(
        train,
        None,
        test_labels,
        model_kwargs=model_kwargs,
        train_kwargs={"seed": seed, "progress_bar": False, **train_kwargs},
        predict_kwargs=predict_kwargs,
    )
    elapsed = time.perf_counter() - start

    table = score_predictions(predicted, train, test, model_name=MODEL, baselines=BASELINES)
    table.insert(0, "cells", "all" if n is None else str(n))
    table.insert(0, "seed", seed)
    table["fit_seconds"] = np.where(table["method"] == MODEL, elapsed, np.nan)
    table["train_cells"] = train.n_obs
    return table


def report(rows: pd.DataFrame, cells: list[str], config: dict, command: str | None = None) -> None:
    rows = rows[rows["reference"] == "control"]
    rows = rows.assign(cells=pd.Categorical(rows["cells"], categories=cells, ordered=True)).sort_values("cells")
    paired = paired_differences(rows, model=MODEL, baselines=BASELINES, by=("cells", "subset"), split_column="seed")
    paired = paired[paired["subset"] == "all"].drop(columns="subset")
    seeds = sorted(rows["seed"].unique())
    means = (
        rows[rows["subset"] == "all"]
        .groupby(["cells", "method"], observed=True, sort=False)[["pearson_all", "pearson_topk", "mse_all"]]
        .mean()
        .reset_index()
    )
    _figure(rows[rows["subset"] == "all"], cells)
    paired_table = paired.assign(
        interval=[f"[{lo:.4g}, {hi:.4g}]" for lo, hi in zip(paired["lower"], paired["upper"], strict=True)]
    )[["cells", "baseline_method", "metric", "n_splits", "model", "baseline", "difference", "interval"]]
    paired_table = paired_table.assign(cells=paired_table["cells"].astype(str))
    means = means.assign(cells=means["cells"].astype(str), method=means["method"].map(LABELS))
    fit_time = rows.groupby("cells", observed=True)["fit_seconds"].median().round(0)
    write_result(
        NAME,
        title="Data efficiency: held-out effects against training cells per knockout (Papalexi 2021)",
        summary=(
            f"Training cells per knockout are subsampled to {' / '.join(cells)} (controls whole) on random 80/20 "
            f"splits of the Papalexi screen (seeds {', '.join(str(s) for s in seeds)}); the test cells of a seed are "
            "the same for every subsample. The model (PerturbationModel and train with their defaults) and the "
            "per-knockout training mean and empirical-Bayes shrunk training mean are fitted on the same cells. "
            "The paired difference model - baseline is averaged over the seeds with a Student-t 95% interval; for "
            "MSE a negative difference favours the model. Model settings: "
            f"{json.dumps(config)}. Median fit time per subsample (s, 2-core CPU shared with other jobs): "
            + ", ".join(f"{c}: {t:.0f}" for c, t in fit_time.items())
            + "."
        ),
        tables=[
            frame_table("Mean over seeds (control reference, all 25 knockouts)", means, digits=4),
            frame_table("Paired difference model - baseline over seeds (95% t interval)", paired_table, digits=4),
        ],
        figure=FIGURE,
        command=command,
    )


def _figure(rows: pd.DataFrame, cells: list[str]) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    x = np.arange(len(cells))
    for ax, metric, title in zip(
        axes, ("pearson_all", "mse_all"), ("Pearson, all genes", "MSE, all genes"), strict=True
    ):
        for offset, method in zip((-0.1, 0.0, 0.1), (MODEL, *BASELINES), strict=True):
            sub = rows[rows["method"] == method].groupby("cells", observed=True)[metric]
            mean, sd, k = sub.mean().reindex(cells), sub.std().reindex(cells), sub.count().reindex(cells)
            ax.errorbar(x + offset, mean, yerr=sd / np.sqrt(k), marker="o", capsize=2, label=LABELS[method])
        ax.set_xticks(x, cells)
        ax.set_xlabel("training cells per knockout")
        ax.set_title(title)
    axes[0].legend(frameon=False, fontsize=8)
    fig.tight_layout()
    fig.savefig(ROOT / FIGURE, dpi=130)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--cells", nargs="+", default=["10", "25", "50", "100", "all"])
    parser.add_argument("--model-kwargs", type=json.loads, default={}, help="JSON of PerturbationModel options")
    parser.add_argument("--train-kwargs", type=json.loads, default={}, help="JSON of train options")
    parser.add_argument("--predict-kwargs", type=json.loads, default={}, help="JSON of predict_shift options")
    parser.add_argument("--report-only", action="store_true", help="write the result from the CSV, fit nothing")
    parser.add_argument("--csv", default=None, help="table of every fit (default: results/data_efficiency.csv)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--merge", nargs="+", default=None, help="CSVs of --csv runs: merge them, then report")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    csv = Path(args.csv) if args.csv else _results_dir(None) / f"{NAME}.csv"
    if args.threads:
        torch.set_num_threads(args.threads)
    config = {"model": args.model_kwargs, "train": args.train_kwargs, "predict": args.predict_kwargs}
    if args.merge:
        merged = pd.concat([pd.read_csv(p, dtype={"cells": str}) for p in args.merge], ignore_index=True)
        merged.drop_duplicates(["seed", "cells", "method", "subset", "reference"]).to_csv(csv, index=False)
    rows = pd.read_csv(csv, dtype={"cells": str}) if csv.is_file() else pd.DataFrame()
    if not (args.report_only or args.merge):
        adata = pertpyro.datasets.papalexi2021()
        pertpyro.setup_anndata(adata, perturbation_key="perturbation", control="control", batch_key="bio_rep")
        for seed in args.seeds:
            for n in args.cells:
                if len(rows) and ((rows["seed"] == seed) & (rows["cells"] == n)).any():
                    continue
                table = run_one(
                    adata,
                    seed,
                    None if n == "all" else int(n),
                    args.model_kwargs,
                    args.train_kwargs,
                    args.predict_kwargs,
                )
                rows = pd.concat([rows, table], ignore_index=True)
                Path(csv).parent.mkdir(parents=True, exist_ok=True)
                rows.to_csv(csv, index=False)
                model_row = table[(table["method"] == MODEL) & (table["subset"] == "all")].iloc[0]
                print(
                    f"seed {seed} n {n}: r_all {model_row['pearson_all']:.3f} mse {model_row['mse_all']:.4f} "
                    f"({model_row['fit_seconds']:.0f} s)",
                    flush=True,
                )
    if args.csv is None:
        cells = [c for c in args.cells if c in set(rows["cells"])]
        command = "python benchmarks/data_efficiency.py --seeds S --cells N --threads 1 --csv FILE (one process per "
        command += "seed and cell count, in parallel), then python benchmarks/data_efficiency.py --merge FILE ..."
        report(rows, cells, config, command if args.merge else None)


if __name__ == "__main__":
    main()
