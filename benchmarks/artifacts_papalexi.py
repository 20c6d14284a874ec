"""QC pass rate of generated Papalexi cells, with and without the artifact block (two fitted CLI runs).

Generated cells: one posterior draw of each held-out control cell replayed by the model (without the block:
``do(perturbation="control")``; with it: ``do(artifact=0)``, the cleaned cell). The QC thresholds come from the
held-out cells that :func:`pertpyro.pp.qc` passed, so the rate can fall anywhere in [0, 1].

Run: ``python benchmarks/artifacts_papalexi.py runs/papalexi runs/papalexi_artifacts``
"""

import argparse

from pertpyro import load_run, pp
from pertpyro.evaluation import qc_pass_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+")
    args = parser.parse_args()
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


if __name__ == "__main__":
    main()
