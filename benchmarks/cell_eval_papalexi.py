"""cell-eval's full profile on generated cells of a fitted Papalexi run: the model beside the baselines.

The section ``pertpyro evaluate RUN --cell-eval`` adds, run on its own (the same function) and timed::

    pertpyro fit configs/papalexi.yaml && python benchmarks/cell_eval_papalexi.py runs/papalexi
"""

from __future__ import annotations

import argparse
import tempfile
import time

from _results import table, write_result

from pertpyro import evaluation, load_run

COLUMNS = ["de_nsig_counts_real", "de_nsig_counts_pred", "de_sig_genes_recall", "precision_at_N", "overlap_at_N"]
COLUMNS += ["de_direction_match", "pearson_delta", "mse", "mae", "discrimination_score_l1"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dir")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    run = load_run(args.run_dir)
    parts = run.subsets()
    with tempfile.TemporaryDirectory() as folder:
        start, cpu = time.perf_counter(), time.process_time()
        result, _ = evaluation.cell_eval_report(run.model, parts["train"], parts["test"], folder, seed=args.seed)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    if result is None:
        raise SystemExit("cell-eval is not installed: pip install 'pertpyro[eval]'")
    rows = [[row["method"], *(row[c] for c in COLUMNS)] for _, row in result.iterrows()]
    real = float(result["de_nsig_counts_real"].iloc[0])
    ratio = [[row["method"], row["de_nsig_counts_pred"] / real] for _, row in result.iterrows()]
    write_result(
        "cell_eval_papalexi",
        title="cell-eval on generated cells (Papalexi, held-out split)",
        summary=(
            "cell-eval's full profile (the mean over the 25 held-out knockouts) on cells generated from the held-out "
            "control cells: the model's by predict_cells (sampled counts), each baseline's by thinning or topping up "
            "the same source cells' counts to its predicted shift; the real held-out cells are the reference. "
            "de_nsig_counts_* are the significant genes per knockout (Wilcoxon, FDR 0.05) in the real and the "
            f"generated cells. The section took {wall:.0f} s wall and {cpu:.0f} s of this process's CPU "
            "(a shared 2-core machine; pdex may use more threads)."
        ),
        tables=[
            table("cell-eval aggregate (mean over knockouts)", ["method", *COLUMNS], rows, digits=3),
            table("significant genes per knockout, generated / real", ["method", "ratio"], ratio, digits=3),
        ],
    )


if __name__ == "__main__":
    main()
