"""Agreement of the ATE estimators on simulated 25-target screens: the table and per-cell analytic ones against the
simulation (the reference), over several seeds.

Each seed simulates a screen (``pertpyro.datasets.simulate``), trains a model and computes the all-label ATE table with
every estimator from the same posterior draws' seed: ``"simulate"`` (simulated counts, the reference), ``"analytic"``
(the expectation over the count noise per cell) and ``"table"`` (that expectation read from one table per gene of the
population). Per estimator and seed: the Pearson correlation of its means with the simulation's, the share of
(label, gene) intervals that overlap the simulation's, the largest absolute difference of the means and the seconds
taken. Run::

    python benchmarks/ate_estimators.py --seeds 0 1 2
    python benchmarks/ate_estimators.py --seeds 1 --name ate_estimators_seed1   # one seed per process
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from _results import table, write_result

import pertpyro

ESTIMATORS = ("simulate", "analytic", "table")


def run_seed(seed: int, args: argparse.Namespace) -> list[list]:
    """One screen: rows ``[seed, estimator, pearson, overlap, max_abs_diff, seconds]``."""
    pertpyro._settings.set_seed(seed)
    adata = pertpyro.datasets.simulate(
        n_cells=args.cells, n_genes=args.genes, n_targets=25, n_combinations=0, seed=seed
    )
    pertpyro.setup_anndata(adata)
    model = pertpyro.PerturbationModel(adata)
    model.train(max_epochs=args.epochs, progress_bar=False, early_stopping=False, seed=seed)
    tables, seconds = {}, {}
    for estimator in ESTIMATORS:
        t0 = time.perf_counter()
        tables[estimator] = model.ate(
            n_samples=args.samples, max_cells=args.max_cells, seed=seed, estimator=estimator, calibrated=False
        )
        seconds[estimator] = time.perf_counter() - t0
    reference = tables["simulate"]
    rows = []
    for estimator in ESTIMATORS[1:]:
        frame = tables[estimator]
        pearson = float(np.corrcoef(frame["mean"], reference["mean"])[0, 1])
        overlap = float(((frame["lower"] <= reference["upper"]) & (reference["lower"] <= frame["upper"])).mean())
        largest = float((frame["mean"] - reference["mean"]).abs().max())
        rows.append([seed, estimator, pearson, overlap, largest, seconds[estimator], seconds["simulate"]])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--cells", type=int, default=3000)
    parser.add_argument("--genes", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--samples", type=int, default=100, help="posterior draws of each ATE table")
    parser.add_argument("--max-cells", type=int, default=500, help="population cells (model.ate max_cells)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--name", default="ate_estimators", help="result file name (one per seed when run in parallel)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [row for seed in args.seeds for row in run_seed(seed, args)]
    for row in rows:
        print(row, flush=True)
    pearson = {e: [r[2] for r in rows if r[1] == e] for e in ESTIMATORS[1:]}
    overlap = {e: [r[3] for r in rows if r[1] == e] for e in ESTIMATORS[1:]}
    summary = (
        f"Simulated screens of 25 targets ({args.cells} cells x {args.genes} genes, one per seed), a model trained "
        f"{args.epochs} epochs on each, and the ATE of every target ({args.samples} posterior draws over "
        f"{args.max_cells} population cells) by each estimator. Against the simulation estimator, the table "
        f"estimator's means correlate at Pearson {min(pearson['table']):.4f} or more and "
        f"{100 * min(overlap['table']):.1f}% or more of its 90% intervals overlap the simulation's, on every seed; "
        f"the per-cell analytic estimator: Pearson {min(pearson['analytic']):.4f} or more, "
        f"{100 * min(overlap['analytic']):.1f}% or more. Seconds are wall time on a shared CPU (one thread)."
    )
    write_result(
        args.name,
        title="ATE estimators: table and analytic against the simulation",
        summary=summary,
        tables=[
            table(
                "Per seed, each estimator against the simulation estimator (same model, same seed)",
                ["seed", "estimator", "pearson", "overlap", "max_abs_diff", "seconds", "simulate_seconds"],
                rows,
                digits=4,
            )
        ],
    )


if __name__ == "__main__":
    main()
