"""The GRN block on the Papalexi 2021 screen: CollecTRI enrichment of inferred edges and CausalBench-style statistics.

Run: ``python benchmarks/grn_papalexi.py [--epochs 40]``. Writes ``benchmarks/results/grn_papalexi.json``.

Trained without a prior network (uniform-sparse prior), on the 64% training cells of the random split of
``configs/papalexi_grn.yaml``, so that CollecTRI is an independent reference. Testable pairs: sources that are
targets of the screen *and* CollecTRI TFs, targets among the measured genes. Reported: odds ratio and one-sided
Fisher p-value of CollecTRI edges among edges with posterior inclusion >= ``--threshold``; AUROC/AUPRC beside the
|corr| and knockout-shift baselines and the prevalence (random); CausalBench-style statistics on the held-out
test cells for the predicted edges and for CollecTRI's testable edges.
"""

import argparse
import logging
import time

import torch
from _results import table, write_result

import pertpyro
from pertpyro.evaluation import (
    causalbench_stats,
    correlation_baseline,
    edge_scores,
    enrichment,
    knockout_shift_baseline,
    split_cells,
)

SUMMARY = (
    "The GRN model (grn=True, no prior network) is trained on the training cells of the random split of the shipped "
    "Papalexi 2021 screen, so that the CollecTRI TF-target network is an independent reference. The tables show the "
    "enrichment of CollecTRI edges among the confidently predicted edges, the ranking of the testable "
    "(TF target, measured gene) pairs beside the |correlation| and knockout-shift baselines, CausalBench-style "
    "statistics on the held-out test cells, and the top edges."
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("pertpyro").setLevel(logging.ERROR)
    adata = pertpyro.datasets.papalexi2021()
    pertpyro.setup_anndata(adata, perturbation_key="perturbation", control="control", batch_key="bio_rep")
    split = split_cells(adata, seed=args.seed)
    train, val, test = (adata[split == s].copy() for s in ("train", "val", "test"))
    t0 = time.perf_counter()
    model = pertpyro.PerturbationModel(train, grn=True, latent_dim=10, seed=args.seed)
    model.train(
        max_epochs=args.epochs,
        batch_size=512,
        lr=1e-2,
        validation_adata=val,
        seed=args.seed,
        progress_bar=False,
        patience=15,
    )
    print(f"trained {len(model.history_)} epochs in {time.perf_counter() - t0:.0f} s")

    net = pertpyro.datasets.collectri()
    edges = model.grn()
    tfs = sorted(set(model.regulators) & set(net["source"]))
    testable = edges[edges["source"].isin(tfs)]
    reference = net[net["source"].isin(tfs) & net["target"].isin(list(adata.var_names))]
    print(
        f"testable pairs: {len(testable)} ({len(tfs)} target TFs in CollecTRI x genes), "
        f"CollecTRI edges among them: {len(reference)}"
    )
    predicted = testable[testable["prob"] >= args.threshold]
    enr = enrichment(predicted, testable, reference)
    print(
        f"edges with prob >= {args.threshold}: {len(predicted)}; CollecTRI enrichment: odds ratio "
        f"{enr['odds_ratio']:.2f}, one-sided Fisher p = {enr['p_value']:.3g} (tp {enr['tp']}, fp {enr['fp']}, "
        f"fn {enr['fn']}, tn {enr['tn']})"
    )
    rows = {
        "pertpyro grn (prob)": edge_scores(testable, reference, testable_sources=tfs),
        "|corr| (train cells)": edge_scores(
            correlation_baseline(train, tfs), reference, score="score", testable_sources=tfs
        ),
        "|knockout shift| (train)": edge_scores(
            knockout_shift_baseline(train, tfs), reference, score="score", testable_sources=tfs
        ),
    }
    print(
        f"{'method':28s} {'AUROC':>6s} {'AUPRC':>6s} {'xrandom':>8s}  (random: AUROC 0.5, AUPRC = prevalence "
        f"{rows['pertpyro grn (prob)']['prevalence']:.3f})"
    )
    for name, r in rows.items():
        print(f"{name:28s} {r['auroc']:6.3f} {r['auprc']:6.3f} {r['auprc_ratio']:8.2f}")
    all_pred = edges[edges["prob"] >= args.threshold]
    print(
        "CausalBench-style statistics on test cells, all predicted edges:",
        {k: round(v, 3) for k, v in causalbench_stats(test, all_pred, seed=args.seed).items()},
    )
    print(
        "same for CollecTRI's testable edges:",
        {k: round(v, 3) for k, v in causalbench_stats(test, reference, seed=args.seed).items()},
    )
    print("top edges:\n" + edges.head(15).to_string())

    stats = {
        "predicted, prob >= threshold": causalbench_stats(test, all_pred, seed=args.seed),
        "CollecTRI's testable edges": causalbench_stats(test, reference, seed=args.seed),
    }
    write_result(
        "grn_papalexi",
        title="Regulatory network on the Papalexi 2021 screen",
        summary=SUMMARY,
        tables=[
            table(
                f"CollecTRI enrichment of the edges with posterior inclusion >= {args.threshold} "
                f"({len(tfs)} targets are CollecTRI TFs; {len(testable):,} testable pairs)",
                [
                    "testable pairs",
                    "CollecTRI edges",
                    "predicted edges",
                    "CollecTRI edges among them",
                    "odds ratio",
                    "one-sided Fisher p",
                ],
                [[len(testable), len(reference), len(predicted), enr["tp"], enr["odds_ratio"], enr["p_value"]]],
                digits=None,
            ),
            table(
                "Ranking of the testable pairs against CollecTRI (random: AUROC 0.5, AUPRC = prevalence "
                f"{rows['pertpyro grn (prob)']['prevalence']:.3f})",
                ["method", "AUROC", "AUPRC", "AUPRC / random"],
                [[name, r["auroc"], r["auprc"], r["auprc_ratio"]] for name, r in rows.items()],
                digits=3,
            ),
            table(
                "CausalBench-style statistics on the held-out test cells",
                ["edges", "n_tested", "fraction significant", "mean Wasserstein", "false omission rate"],
                [
                    [k, s["n_tested"], s["frac_significant"], s["mean_wasserstein"], s["false_omission_rate"]]
                    for k, s in stats.items()
                ],
                digits=3,
            ),
            table(
                "The 15 edges with the highest posterior inclusion",
                ["source", "target", "prob", "weight", "ci_lower", "ci_upper"],
                edges.head(15)[["source", "target", "prob", "weight", "ci_lower", "ci_upper"]].itertuples(
                    index=False, name=None
                ),
                digits=3,
            ),
        ],
    )


if __name__ == "__main__":
    main()
