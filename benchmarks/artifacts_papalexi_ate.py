"""Held-out ATE metrics of fitted CLI runs only (no baselines, IWELBO or interval coverage): a quick ``evaluate``.

``pertpyro evaluate RUN`` also scores the baselines, the IWELBO and the coverage of the intervals, which takes long
on a CPU; this prints only the model's rows of its ATE table (``pertpyro.evaluation.ate_metrics``), with
``--n-samples`` posterior draws per label.

Run: ``python benchmarks/artifacts_papalexi_ate.py runs/papalexi runs/papalexi_artifacts --n-samples 30``
"""

import argparse

from pertpyro import evaluation, load_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+")
    parser.add_argument("--n-samples", type=int, default=30)
    args = parser.parse_args()
    for run_dir in args.run_dirs:
        run = load_run(run_dir)
        model, config, parts = run.model, run.config, run.subsets()
        table = evaluation.ate_metrics(
            model,
            parts["test"],
            adata_train=parts["train"],
            top_k=config["evaluate"]["top_k"],
            reference=("control", "perturbed"),
            baselines=(),
            iwelbo=False,
            predict_kwargs={"n_samples": args.n_samples},
        )
        print(f"{run_dir} ({len(model.history_)} epochs, n_samples={args.n_samples})")
        print(evaluation.format_table(table))


if __name__ == "__main__":
    main()
