"""Coverage of ``model.ate`` credible intervals for the simulator's true shifts, before and after recalibration.

Two simulated screens (seeds ``--seed`` and ``--seed + 1``) are each split 64/16/20 into train/val/test cells; a
model is fitted on each training part. Coverage of the 50/80/90/95% intervals for the true intent-to-treat shifts
(``truth_shift_frame``) is reported for:

- ``posterior``: the raw equal-tailed posterior intervals (what ``model.ate`` reports);
- ``heldout-cells``: recalibrated by :func:`pertpyro.evaluation.fit_interval_calibration` fitted on the
  observed shifts of the same screen's *test cells* (no truth used: the method available on real data);
- ``other-simulation``: recalibrated with the calibration fitted on the *other* screen's truth.

Run: ``python benchmarks/calibration.py`` (about 2 minutes on 2 idle CPU cores; 30 minutes on a shared, loaded one).
"""

import argparse
import time

import pandas as pd
import torch

import pertpyro
from pertpyro.datasets import truth_shift_frame
from pertpyro.evaluation import (
    fit_interval_calibration,
    heldout_reference,
    interval_coverage,
    split_cells,
)


def fit_screen(seed: int, args: argparse.Namespace) -> dict:
    """Simulate, split, train; posterior draws of the shifts, truth and held-out reference."""
    adata = pertpyro.datasets.simulate(
        n_cells=args.cells,
        n_genes=args.genes,
        n_targets=args.targets,
        n_combinations=2,
        seed=seed,
        n_truth_cells=4000,
    )
    pertpyro.setup_anndata(adata, batch_key="batch")
    split = split_cells(adata, seed=0)
    train, val, test = (adata[split.to_numpy() == s].copy() for s in ("train", "val", "test"))
    model = pertpyro.PerturbationModel(train, latent_dim=5, seed=0)
    model.train(
        max_epochs=args.epochs, batch_size=256, lr=1e-2, validation_adata=val, seed=0, progress_bar=False, patience=10
    )
    truth = truth_shift_frame(adata)
    labels = list(truth.index)
    draws = model.ate_draws(labels, n_samples=args.samples, seed=0)
    reference, se = heldout_reference(test, labels)
    return {"draws": draws, "truth": truth.to_numpy(), "reference": reference.to_numpy(), "se": se.to_numpy()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=4000)
    parser.add_argument("--genes", type=int, default=100)
    parser.add_argument("--targets", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(2)
    start = time.perf_counter()
    screens = {s: fit_screen(s, args) for s in (args.seed, args.seed + 1)}
    rows = []
    for seed, screen in screens.items():
        other = screens[args.seed + 1 if seed == args.seed else args.seed]
        methods = {
            "posterior": None,
            "heldout-cells": fit_interval_calibration(screen["draws"], screen["reference"], reference_se=screen["se"]),
            "other-simulation": fit_interval_calibration(other["draws"], other["truth"]),
        }
        for name, calibration in methods.items():
            table = interval_coverage(screen["draws"], screen["truth"], calibration=calibration)
            fitted = "" if calibration is None else f"scale={calibration.scale:.2f} relative={calibration.relative:.2f}"
            for row in table.itertuples():
                rows.append((seed, name, fitted, row.level, row.coverage, row.mean_width))
    out = pd.DataFrame(rows, columns=["seed", "intervals", "fitted", "level", "coverage", "mean_width"])
    wide = out.pivot_table(index=["seed", "intervals", "fitted"], columns="level", values="coverage", sort=False)
    widths = out.pivot_table(index=["seed", "intervals"], columns="level", values="mean_width", sort=False)
    print(
        f"simulate(n_cells={args.cells}, n_genes={args.genes}, n_targets={args.targets}, n_combinations=2), "
        f"{args.epochs} epochs max, {args.samples} posterior draws; {time.perf_counter() - start:.0f} s"
    )
    print("coverage of the true shifts (columns: nominal level)")
    print(wide.round(3).to_string())
    print("mean interval width")
    print(widths.round(3).to_string())


if __name__ == "__main__":
    main()
