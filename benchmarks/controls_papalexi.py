"""Positive and negative controls on the Papalexi screen: known knockdowns found, null pseudo-targets silent.

For each split seed the shipped Papalexi 2021 screen is split 64/16/20 (stratified by perturbation) and fitted
with the settings of ``configs/papalexi.yaml`` twice on the same cells: as shipped, and with null pseudo-targets
(``pertpyro.data.add_negative_controls``: the cells of two non-targeting guides given fake target labels, as
``pertpyro fit`` does with ``data.negative_controls: 2`` and a guide column in the config). Reported:

- the held-out ATE metrics of the 25 real knockouts for both fits (do the pseudo-targets cost the real effects?);
- the control table (``pertpyro.evaluation.control_table``): for each null pseudo-target the share of genes whose
  50/80/90/95% intervals exclude 0 and its hits at a Bayesian FDR among all hits; for each of the 9 targets that
  are measured genes, the shift of the target on itself. Intervals raw and calibrated on the nulls
  (``pertpyro.posterior.null_calibration``; each null's row is scored with the calibration fitted on the other
  null, so no null is scored by a calibration fitted on itself).

Run: ``python benchmarks/controls_papalexi.py --seeds 0 1`` (two trainings per seed; fitted models are kept in
``--models`` and reused; ``--fits nulls`` fits only the model with pseudo-targets). Writes ``benchmarks/results/controls_papalexi.json``.
"""

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from _results import table, write_result

import pertpyro
from pertpyro._config import read_config
from pertpyro.data import add_negative_controls, negative_control_labels
from pertpyro.evaluation import ate_metrics, controls_report, split_cells


def fit_or_load(path: Path, train, val, config: dict, epochs: int | None) -> pertpyro.PerturbationModel:
    if (path / "model.pt").exists():
        return pertpyro.PerturbationModel.load(path, train)
    model = pertpyro.PerturbationModel(train, **config["model"])
    settings = {**config["train"], "progress_bar": False}
    if epochs is not None:
        settings["max_epochs"] = epochs
    model.train(validation_adata=val, **settings)
    model.save(path, overwrite=True)
    return model


SUMMARY = (
    "The shipped Papalexi 2021 screen (20,729 cells x 299 genes, 25 knockouts, 9 non-targeting guides) is split "
    "64/16/20 and fitted with the settings of configs/papalexi.yaml, once as shipped and once with two null "
    "pseudo-targets (the control cells of two non-targeting guides given fake target labels). The first table "
    "compares the held-out ATE metrics of the 25 real knockouts between the two fits. The second is the control "
    "table of the fit with pseudo-targets: for each null pseudo-target, the share of its 299 genes whose 50/80/90/95% "
    "intervals exclude 0 (nominal 0.5/0.2/0.1/0.05) and the hits it draws among all hits of the screen's single "
    "targets (P(|shift| > threshold), Bayesian FDR); for each target that is a measured gene, its shift on itself "
    "(90% interval). Intervals are raw, or calibrated on the nulls (each null scored with the calibration fitted "
    "on the other one)."
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--config", default="configs/papalexi.yaml")
    parser.add_argument("--epochs", type=int, default=None, help="override the config's max_epochs")
    parser.add_argument("--n-controls", type=int, default=2)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--basal", choices=["own", "control"], default="own", help="predict_shift's basal states")
    parser.add_argument("--threshold", type=float, default=0.1)
    parser.add_argument("--fdr", type=float, default=0.1)
    parser.add_argument("--models", default="runs/controls_papalexi", help="fitted models are kept (and reused) here")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--fits", choices=("both", "nulls"), default="both", help="nulls: fit only the model with null pseudo-targets"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = read_config(args.config)
    data = config["data"]
    metric_rows, control_rows = [], []
    for seed in args.seeds:
        start = time.perf_counter()
        plain = pertpyro.datasets.papalexi2021()
        keys = {
            "perturbation_key": data["perturbation_key"],
            "control": data["control"],
            "batch_key": data["batch_key"],
        }
        pertpyro.setup_anndata(plain, **keys, guide_key=data["guide_key"])
        split = split_cells(plain, seed=seed).to_numpy()
        with_nulls = plain.copy()
        add_negative_controls(
            with_nulls,
            args.n_controls,
            perturbation_key=data["perturbation_key"],
            control=data["control"],
            guide_key=data["guide_key"],
        )
        pertpyro.setup_anndata(with_nulls, **keys, guide_key=data["guide_key"])
        nulls = negative_control_labels(with_nulls)
        parts = {
            name: {s: a[split == s].copy() for s in ("train", "val", "test")}
            for name, a in (("with null pseudo-targets", with_nulls), ("as shipped", plain))
        }
        test = parts["as shipped"]["test"]
        models = {}
        for name, part in parts.items():
            if args.fits == "nulls" and name == "as shipped":
                continue
            tag = "plain" if name == "as shipped" else "nulls"
            models[name] = fit_or_load(
                Path(args.models) / f"seed{seed}_{tag}", part["train"], part["val"], config, args.epochs
            )
        for name, model in models.items():
            metrics = ate_metrics(
                model,
                test,
                adata_train=parts["as shipped"]["train"],
                top_k=20,
                iwelbo=False,
                predict_kwargs={"n_samples": args.samples, "basal": args.basal},
                baselines=("shrunk_training_mean",),
            )
            for row in metrics[metrics["reference"] == "control"].itertuples():
                if row.method != "PerturbationModel" and name != next(iter(models)):
                    continue  # the baselines once
                metric_rows.append(
                    [
                        seed,
                        row.method if row.method != "PerturbationModel" else f"model {name}",
                        row.subset,
                        row.pearson_all,
                        row.pearson_topk,
                        row.mse_all,
                    ]
                )
        model = models["with null pseudo-targets"]
        labels = list(model.registry.targets)
        draws = model.ate_draws(labels, n_samples=args.samples, seed=0)
        report, _ = controls_report(model, draws, labels, threshold=args.threshold, fdr=args.fdr)
        for row in report.itertuples(index=False):
            control_rows.append([seed, *row])
        print(f"seed {seed}: {time.perf_counter() - start:.0f} s; nulls {nulls}", flush=True)
        print(report.round(3).to_string(index=False), flush=True)
    metric_frame = pd.DataFrame(metric_rows, columns=["seed", "method", "subset", "pearson", "top-20", "mse"])
    print(metric_frame.round(4).to_string(index=False))
    columns = ["seed", *report.columns]
    write_result(
        "controls_papalexi",
        title="Positive and negative controls on the Papalexi screen",
        summary=SUMMARY,
        tables=[
            table(
                "Held-out ATE metrics of the 25 real knockouts (reference: control cells), with and without null "
                "pseudo-targets in the fit; Pearson over all genes and over each knockout's 20 most shifted genes",
                ["seed", "method", "subset", "Pearson all", "Pearson top-20", "MSE"],
                metric_rows,
                digits=4,
            ),
            table(
                f"Controls (|shift| > {args.threshold}, Bayesian FDR {args.fdr}; 90% intervals of the positive "
                "controls)",
                columns,
                [[*r[:-1], None if isinstance(r[-1], float) and np.isnan(r[-1]) else r[-1]] for r in control_rows],
                digits=3,
            ),
        ],
    )


if __name__ == "__main__":
    main()
