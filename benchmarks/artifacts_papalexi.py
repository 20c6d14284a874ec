"""QC pass rate of generated Papalexi cells, with and without the artifact block (two fitted CLI runs).

Generated cells: one posterior draw of each held-out control cell replayed by the model (without the block:
``do(perturbation="control")``; with it: ``do(artifact=0)``, the cleaned cell). The QC thresholds come from the
held-out cells that :func:`pertpyro.pp.qc` passed, so the rate can fall anywhere in [0, 1].

Run (after ``pertpyro fit`` and ``pertpyro evaluate`` of ``configs/papalexi.yaml`` and
``configs/papalexi_artifacts.yaml``): ``python benchmarks/artifacts_papalexi.py runs/papalexi runs/papalexi_artifacts``.
Writes ``benchmarks/results/artifacts_papalexi.json`` with the QC pass rates and, where ``pertpyro evaluate`` wrote
``metrics.csv`` into a run, the model's held-out ATE metrics.
"""

import argparse
from pathlib import Path

import pandas as pd
from _results import table, write_result

from pertpyro import load_run, pp
from pertpyro.evaluation import qc_pass_rate

SUMMARY = (
    "The shipped Papalexi 2021 screen is fitted without and with the artifact block (latent mode, artifact labels "
    "from pp.qc), with the same split and training. The tables show the model's held-out ATE metrics for all "
    "knockouts and the strong ones, against control cells and against all perturbed cells, and how often generated "
    "held-out control cells pass QC: without the block as replayed by do(perturbation='control'), with it as "
    "cleaned by do(artifact=0)."
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+")
    args = parser.parse_args()
    qc_rows, metric_rows = [], []
    for run_dir in args.run_dirs:
        run = load_run(run_dir)
        model, adata, config = run
        if "artifact" not in adata.obs:
            pp.qc(adata, batch_key=config["data"]["batch_key"], doublets="auto")
        test = run.subsets()["test"]
        reference = test[~test.obs["artifact"].to_numpy(bool)]
        controls = test[(test.obs["perturbation"] == "control").to_numpy()]
        do = {"artifact": 0} if model.init_kwargs.get("artifacts") else {"perturbation": "control"}
        generated = model.counterfactual(controls, do=do, n_samples=1).layers["counts"]
        print(
            f"{run_dir}: QC pass rate of {controls.n_obs} generated held-out control cells {qc_pass_rate(generated, reference):.3f}"
            f" (observed held-out control cells {qc_pass_rate(controls, reference):.3f}; "
            f"pp.qc flagged {test.obs['artifact'].mean():.3f} of held-out cells)"
        )
        block = "with the block" if model.init_kwargs.get("artifacts") else "without the block"
        qc_rows.append(
            [
                run_dir,
                block,
                controls.n_obs,
                qc_pass_rate(generated, reference),
                qc_pass_rate(controls, reference),
                float(test.obs["artifact"].mean()),
            ]
        )
        metrics = Path(run_dir) / "metrics.csv"
        if metrics.is_file():
            frame = pd.read_csv(metrics)
            for row in frame[frame["method"] == "PerturbationModel"].itertuples():
                metric_rows.append(
                    [
                        run_dir,
                        block,
                        row.subset,
                        row.reference,
                        row.pearson_all,
                        row.r2_all,
                        row.mse_all,
                        row.pearson_topk,
                    ]
                )
    tables = [
        table(
            "QC pass rate (pp.qc's criteria, thresholds from the held-out cells pp.qc passed) of generated held-out "
            "control cells (one posterior draw each) and of the observed ones",
            ["run", "model", "control cells", "generated", "observed", "held-out cells flagged by pp.qc"],
            qc_rows,
            digits=3,
        )
    ]
    if metric_rows:
        tables.insert(
            0,
            table(
                "Held-out ATE metrics of the model (metrics.csv of pertpyro evaluate)",
                ["run", "model", "subset", "reference", "Pearson all", "R2 all", "MSE all", "Pearson top-20"],
                metric_rows,
                digits=4,
            ),
        )
    write_result(
        "artifacts_papalexi", title="Technical artifacts on the Papalexi 2021 screen", summary=SUMMARY, tables=tables
    )


if __name__ == "__main__":
    main()
