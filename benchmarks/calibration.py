"""Coverage of ``model.ate`` intervals for the simulator's true shifts: raw posterior vs replica-calibrated.

For each seed, a simulated screen is split 64/16/20 into train/val/test cells and a model is fitted on the
training cells. The coverage of the 50/80/90/95% intervals for the true intent-to-treat shifts
(``truth_shift_frame``: 1,000 label x gene entries) is reported for:

- ``raw``: the equal-tailed posterior intervals (``model.ate(..., calibrated=False)``);
- ``calibrated``: after ``model.calibrate()``, which fits a variance model on a replica screen simulated from the
  fitted model itself (no truth of the screen is used; :mod:`pertpyro.posterior._replica`).

It also reports Bayesian-FDR hit calls (``ate_probability(threshold, fdr)``) against the truth: calls, realised
false discovery rate and power, at targets 0.05 and 0.1, by both rules of :func:`pertpyro.causal.bayesian_fdr_calls`
(``local``, the default, and ``set``).

Run: ``python benchmarks/calibration.py --seeds 1 2 3 4`` (three trainings per seed, 3-9 minutes each on 2 CPU cores;
``--jobs 4 --threads 1`` fits the seeds in parallel processes).
Writes ``benchmarks/results/calibration.json`` (``calibration_df{DF}.json`` for another ``--effect-df``).
"""

import argparse
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pandas as pd
import torch
from _results import table, write_result

import pertpyro
from pertpyro.causal import exceedance_table
from pertpyro.datasets import truth_shift_frame
from pertpyro.evaluation import split_cells
from pertpyro.posterior import interval_coverage


def hit_calls(draws: np.ndarray, truth: np.ndarray, labels: list, genes: list, calibration, args, fdr, rule) -> dict:
    """Bayesian FDR calls at ``args.threshold`` / ``fdr`` by ``rule``, scored against the truth."""
    table = exceedance_table(
        draws, labels, genes, threshold=args.threshold, fdr=fdr, calibration=calibration, rule=rule
    )
    called = table["hit"].to_numpy()
    real = np.abs(truth.ravel()) > args.threshold
    n_called = int(called.sum())
    return {
        "calls": n_called,
        "real": int(real.sum()),
        "false": int((called & ~real).sum()),
        "fdr": float((called & ~real).sum() / max(n_called, 1)),
        "power": float((called & real).sum() / max(real.sum(), 1)),
    }


SUMMARY = (
    "Simulated screens (8 targets and 2 two-target combinations x 100 genes, so 1,000 true intent-to-treat shifts "
    "per screen) are split 64/16/20 and fitted on the training cells. The tables show the coverage of the true "
    "shifts by the 50/80/90/95% intervals of model.ate, raw (equal-tailed posterior intervals) and after "
    "model.calibrate() (a variance model fitted on replica screens simulated from the fitted model, so no truth of "
    "the screen is used), with the fitted scale and relative terms and the mean width of the 90% intervals; and "
    "Bayesian-FDR hit calls (ate_probability(threshold, fdr)) scored against the truth."
)


def run_seed(seed: int, args: argparse.Namespace) -> tuple[list, list]:
    start = time.perf_counter()
    adata = pertpyro.datasets.simulate(
        n_cells=args.cells, n_genes=args.genes, n_targets=args.targets, n_combinations=2, seed=seed, n_truth_cells=4000
    )
    pertpyro.setup_anndata(adata, batch_key="batch")
    split = split_cells(adata, seed=0)
    train, val = (adata[split.to_numpy() == s].copy() for s in ("train", "val"))
    model = pertpyro.PerturbationModel(train, latent_dim=5, seed=0, effect_df=args.effect_df)
    model.train(
        max_epochs=args.epochs, batch_size=256, lr=1e-2, validation_adata=val, seed=0, progress_bar=False, patience=10
    )
    truth_frame = truth_shift_frame(adata)
    labels, truth = list(truth_frame.index), truth_frame.to_numpy()
    draws = model.ate_draws(labels, n_samples=args.samples, seed=0)
    replica = model.calibrate(labels, n_samples=args.samples, n_replicas=args.replicas)
    calibration = model.interval_calibration_
    rows, hits = [], []
    for name, cal in (("raw", None), ("calibrated", calibration)):
        table = interval_coverage(draws, truth, calibration=cal)
        for row in table.itertuples():
            rows.append((seed, name, row.level, row.coverage, row.mean_width))
        for fdr in args.fdr:
            for rule in ("local", "set"):
                calls = hit_calls(draws, truth, labels, list(adata.var_names), cal, args, fdr, rule)
                hits.append({"seed": seed, "intervals": name, "target FDR": fdr, "rule": rule, **calls})
    for row in replica.itertuples():
        rows.append((seed, "replica (fit)", row.level, row.calibrated, np.nan))
    for h in hits:
        if h["intervals"] == "calibrated":
            h["scale"], h["relative"] = calibration.scale, calibration.relative
    print(
        f"seed {seed}: scale {calibration.scale:.2f}, relative {calibration.relative:.2f}, "
        f"{time.perf_counter() - start:.0f} s",
        flush=True,
    )
    return rows, hits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=4000)
    parser.add_argument("--genes", type=int, default=100)
    parser.add_argument("--targets", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--replicas", type=int, default=2, help="replica screens of model.calibrate()")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--threshold", type=float, default=0.1)
    parser.add_argument("--fdr", type=float, nargs="+", default=[0.05, 0.1])
    parser.add_argument("--jobs", type=int, default=1, help="seeds fitted in parallel processes")
    parser.add_argument(
        "--effect-df", type=float, default=4.0, help="Student-t effect prior (0: Normal; default: the package's)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="write the coverage table to this CSV")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows, hits = [], []
    with ProcessPoolExecutor(
        max_workers=args.jobs, initializer=torch.set_num_threads, initargs=(args.threads,)
    ) as pool:
        for r, h in pool.map(run_seed, args.seeds, [args] * len(args.seeds)):
            rows += r
            hits += h
    out = pd.DataFrame(rows, columns=["seed", "intervals", "level", "coverage", "mean_width"])
    print(
        f"simulate(n_cells={args.cells}, n_genes={args.genes}, n_targets={args.targets}, n_combinations=2), "
        f"at most {args.epochs} epochs, {args.samples} posterior draws"
    )
    print("coverage of the true shifts (columns: nominal level)")
    wide = out.pivot_table(index=["seed", "intervals"], columns="level", values="coverage", sort=False)
    print(wide.round(3).to_string())
    print("mean width of the intervals")
    widths = out.dropna().pivot_table(index=["seed", "intervals"], columns="level", values="mean_width", sort=False)
    print(widths.round(3).to_string())
    print(f"Bayesian FDR hit calls (|shift| > {args.threshold}) against the truth")
    print(pd.DataFrame(hits).round(3).to_string(index=False))
    if args.out:
        out.to_csv(args.out, index=False)

    terms = {(h["seed"], h["intervals"]): (h.get("scale"), h.get("relative")) for h in hits if h["rule"] == "local"}
    coverage = []
    for (seed, name), frame in out[out["intervals"] != "replica (fit)"].groupby(["seed", "intervals"], sort=False):
        by_level = frame.set_index("level")
        scale, relative = terms[(seed, name)]
        coverage.append([seed, name, scale, relative, *by_level["coverage"], by_level["mean_width"].loc[0.9]])
    levels = [f"{level:.0%}" for level in sorted(out["level"].unique())]
    prior = "Normal" if args.effect_df == 0 else f"Student-t({args.effect_df:g})"
    setting = (
        f"simulate(n_cells={args.cells}, n_genes={args.genes}, n_targets={args.targets}, n_combinations=2), "
        f"{prior} effect prior, at most {args.epochs} epochs, {args.samples} posterior draws"
    )
    write_result(
        "calibration" if args.effect_df == 4 else f"calibration_df{args.effect_df:g}",
        title=f"Calibrated ATE intervals on the simulator ({prior} effect prior)",
        summary=SUMMARY,
        tables=[
            table(
                f"Coverage of the true shifts; {setting}",
                ["seed", "intervals", "scale", "relative", *levels, "mean width of 90%"],
                coverage,
                digits=3,
            ),
            table(
                f"Bayesian FDR hit calls (|shift| > {args.threshold}) against the truth; rule local: 1 - p <= target "
                "(the default), set: mean(1 - p) over the called set <= target",
                ["seed", "intervals", "target FDR", "rule", "calls", "realised FDR", "power"],
                [
                    [h["seed"], h["intervals"], h["target FDR"], h["rule"], h["calls"], h["fdr"], h["power"]]
                    for h in hits
                ],
                digits=3,
            ),
        ],
    )


if __name__ == "__main__":
    main()
