"""The README's main command on the shipped Papalexi screen, timed, and its result file ``papalexi.json``.

Runs ``pertpyro fit configs/papalexi.yaml`` and ``pertpyro evaluate runs/papalexi`` (the fitted run's split and
``evaluate.n_splits - 1`` refits on the splits of the next seeds), then writes the per-split means, the paired
differences model - baseline with their 95% intervals, the run's own split, and the wall times::

    python benchmarks/papalexi.py                 # fit (--overwrite) and evaluate, then write the result
    python benchmarks/papalexi.py --report-only   # only write the result from runs/papalexi
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
from _results import ROOT, table, write_result

from pertpyro import cli, evaluation, runs

CONFIG = "configs/papalexi.yaml"
RUN = Path("runs/papalexi")
NAMES = {
    "PerturbationModel": "pertpyro PerturbationModel",
    "no_change": "no change",
    "training_mean": "training mean",
    "shrunk_training_mean": "empirical-Bayes shrunk training mean",
}
METRICS = {"pearson_all": "Pearson all", "pearson_topk": "Pearson top-20", "mse_all": "MSE all"}


def _means(per_split: pd.DataFrame) -> list[list]:
    """Mean over splits per method: control reference (all, strong) and perturbed reference (all)."""
    rows = []
    for method, name in NAMES.items():
        sub = per_split[per_split["method"] == method]
        ctrl = sub[(sub["reference"] == "control") & (sub["subset"] == "all")][list(METRICS)].mean()
        strong = sub[(sub["reference"] == "control") & (sub["subset"] == "strong")][list(METRICS)].mean()
        pert = sub[(sub["reference"] == "perturbed") & (sub["subset"] == "all")][list(METRICS)].mean()
        rows.append([name, *ctrl, strong["pearson_all"], strong["pearson_topk"], pert["pearson_all"]])
    return rows


def _paired(paired: pd.DataFrame) -> list[list]:
    rows = []
    for _, r in paired.iterrows():
        rows.append(
            [
                f"{r['subset']}, {r['reference']}",
                NAMES[r["baseline_method"]],
                METRICS[r["metric"]],
                r["model"],
                r["baseline"],
                r["difference"],
                f"[{r['lower']:.4f}, {r['upper']:.4f}]",
                f"[{r['lower_corrected']:.4f}, {r['upper_corrected']:.4f}]",
            ]
        )
    return rows


def report(run: Path, seconds: dict[str, float] | None) -> None:
    per_split = pd.read_csv(run / "splits.csv")
    paired = pd.read_csv(run / "paired.csv")
    k = per_split["split"].nunique()
    first = per_split[(per_split["split"] == per_split["split"].iloc[0]) & (per_split["subset"] == "all")]
    first = first[first["reference"] == "control"]
    iwelbo = float(first["iwelbo"].dropna().iloc[0])
    tables = [
        table(
            f"Mean over {k} random splits (control reference unless stated)",
            [
                "method",
                "Pearson all",
                "Pearson top-20",
                "MSE all",
                "strong: Pearson all",
                "strong: Pearson top-20",
                "perturbed reference: Pearson all",
            ],
            _means(per_split),
            digits=4,
        ),
        table(
            f"Paired difference model - baseline over {k} splits: mean, 95% t interval, and the interval widened "
            "for overlapping training sets (Nadeau and Bengio); for MSE a negative difference favours the model",
            ["subset, reference", "baseline", "metric", "model", "baseline mean", "difference", "95% t", "corrected"],
            _paired(paired[paired["metric"].isin(list(METRICS))]),
            digits=4,
        ),
        table(
            "Each split (control reference, all knockouts)",
            ["split seed", "method", "Pearson all", "Pearson top-20", "MSE all"],
            [
                [
                    int(r["split"]),
                    NAMES.get(r["method"], r["method"]),
                    r["pearson_all"],
                    r["pearson_topk"],
                    r["mse_all"],
                ]
                for _, r in per_split[
                    (per_split["subset"] == "all")
                    & (per_split["reference"] == "control")
                    & per_split["method"].isin(["PerturbationModel", "training_mean", "shrunk_training_mean"])
                ].iterrows()
            ],
            digits=4,
        ),
        table("Held-out fit of the run's own split", ["quantity", "value"], [["IWELBO, nats per cell", iwelbo]], 1),
    ]
    if seconds:
        tables.append(
            table(
                "Wall time (2-core CPU shared with other jobs)",
                ["step", "seconds"],
                [[k_, v] for k_, v in seconds.items()],
                digits=0,
            )
        )
    write_result(
        "papalexi",
        title="Held-out effects on the Papalexi 2021 screen over random splits",
        command=f"pertpyro fit {CONFIG} && pertpyro evaluate {run}  (python benchmarks/papalexi.py)",
        summary=(
            f"pertpyro evaluate scores the model that {CONFIG} fits on the shipped Papalexi 2021 ECCITE-seq screen "
            "(20,729 cells x 299 genes, 25 knockouts) on held-out cells, beside baselines fitted on the same training "
            f"cells, over {k} random 64/16/20 splits stratified by perturbation (the fitted run's split, seed 0, and "
            f"{k - 1} refits with the same settings on the splits of seeds 1 to {k - 1}). A knockout's effect is the "
            "shift of mean log1p(1e4 x / sum x) of its test cells against the test control cells (or, for the "
            "perturbed reference, against all perturbed test cells); Pearson is taken over all 299 genes and over "
            "each knockout's 20 genes with the largest observed shift, then averaged over the 25 knockouts. 'Strong' "
            "are the knockouts whose training shift stands clearly above sampling noise. The paired difference of a "
            "metric is model minus baseline on the same split; its interval is a Student-t interval over the splits."
        ),
        tables=tables,
    )


def one_split(seed: int, out: Path) -> None:
    """One refit of ``evaluate``'s repetition (the split of ``seed``), scored as ``evaluate`` scores it, to ``out``."""
    config = cli.load_config(ROOT / CONFIG)
    adata = runs.load_data(config)
    start = time.perf_counter()
    per_split, _ = evaluation.repeated_evaluation(
        adata,
        lambda s: cli.make_split(adata, {**config, "split": {**config["split"], "seed": s}}),
        seed=seed,
        n_splits=1,
        model_kwargs=config["model"],
        train_kwargs={**config["train"], "progress_bar": False},
        n_samples=config["evaluate"]["n_samples"],
        top_k=config["evaluate"]["top_k"],
        reference=("control", "perturbed"),
    )
    per_split["seconds"] = time.perf_counter() - start
    per_split.to_csv(out, index=False)


def merge(run: Path, parts: list[Path]) -> None:
    """``splits.csv`` and ``paired.csv`` of ``run`` from its own split (``metrics.csv``) and refits run apart."""
    first = pd.read_csv(run / "metrics.csv")
    first.insert(0, "split", 0)
    per_split = pd.concat([first, *(pd.read_csv(p) for p in parts)], ignore_index=True)
    parts_ = runs.load_run(run, model=False).subsets()
    ratio = parts_["test"].n_obs / parts_["train"].n_obs
    paired = evaluation.paired_differences(per_split, model="PerturbationModel")
    corrected = evaluation.paired_differences(per_split, model="PerturbationModel", test_train_ratio=ratio)
    paired["lower_corrected"], paired["upper_corrected"] = corrected["lower"], corrected["upper"]
    per_split.to_csv(run / "splits.csv", index=False)
    paired.to_csv(run / "paired.csv", index=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--split", type=int, default=None, help="only refit and score the split of this seed")
    parser.add_argument("--out", type=Path, default=None, help="CSV of --split")
    parser.add_argument("--merge", type=Path, nargs="+", default=None, help="CSVs of --split runs to merge")
    args = parser.parse_args()
    run = ROOT / RUN
    seconds = None
    if args.split is not None:
        one_split(args.split, args.out)
        return
    if args.merge:
        merge(run, args.merge)
    if not (args.report_only or args.merge):
        start = time.perf_counter()
        assert cli.main(["fit", str(ROOT / CONFIG), "--output", str(run), "--overwrite"]) == 0
        fitted = time.perf_counter()
        assert cli.main(["evaluate", str(run)]) == 0
        seconds = {
            f"pertpyro fit {CONFIG}": fitted - start,
            f"pertpyro evaluate {RUN} (the run's split and the refits)": time.perf_counter() - fitted,
        }
    report(run, seconds)


if __name__ == "__main__":
    main()
