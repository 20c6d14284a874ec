"""The GRN block on the Papalexi 2021 screen against CollecTRI, beside the two naive rankings, over training seeds.

Run: ``python benchmarks/grn_papalexi.py [--epochs 40] [--seeds 0 1] [--variants grn_steps=1 ...]``. Writes
``benchmarks/results/grn_papalexi.json``.

Trained without a prior network (uniform-sparse prior), on the 64% training cells of the random split of the
screen (split seed ``--split-seed``), once per training seed, so that CollecTRI is an independent reference.
Testable pairs: sources that are targets of the screen *and* CollecTRI TFs, targets among the measured genes.
Reported per seed: AUROC, AUPRC and precision at the top ``--k`` pairs of the model's two rankings (direct edges by
``score``, total effects by ``|total| / total_sd``) beside the |correlation| and |knockout shift| rankings of the same training
cells, the |correlation| over the training control cells only (the genes' natural covariation, without the
knockouts) and the random ranking; the paired difference of each model ranking to the better naive ranking; the
AUPRC and precision of other posterior summaries of the same fit (inclusion probability, weight, total effect), the
evidence for the choice of ``score`` as ``model.grn()``'s ranking column; the enrichment of CollecTRI edges among the
edges with posterior inclusion >= ``--threshold``; CausalBench-style
statistics on the held-out test cells for the top ``--k`` model edges and for CollecTRI's testable edges; the
top edges of STAT1. ``--variants`` (``option=value`` of ``PerturbationModel``) refits with other settings and reports
the ranking column's AUPRC and precision beside those of the defaults, per seed.
"""

import argparse
import logging
import time

import numpy as np
import torch
from _results import table, write_result

import pertpyro
from pertpyro.evaluation import (
    causalbench_stats,
    compare_rankings,
    correlation_baseline,
    enrichment,
    model_rankings,
    naive_rankings,
    split_cells,
)

SUMMARY = (
    "The GRN model (grn=True, no prior network) is trained on the training cells of a random split of the shipped "
    "Papalexi 2021 screen, once per training seed, so that the CollecTRI TF-target network is an independent "
    "reference. The testable pairs are (knocked-out CollecTRI TF, measured gene). The tables rank them by the "
    "model's direct-edge score and by its total knockout effect (posterior mean over sd), beside the two naive rankings a user could make "
    "from the same training cells (|correlation| with the TF's expression, |shift of the gene in the TF's knockout "
    "cells|) and the |correlation| over control cells only; give the paired difference to the better naive ranking "
    "per seed; compare other posterior summaries of "
    "the same fits as rankings (the evidence for the ranking column of model.grn()); the enrichment of CollecTRI edges "
    "among the confidently included edges; CausalBench-style statistics on the held-out test cells; STAT1's "
    "top targets; and the ranking column under other settings of the block."
)
METRICS = ("auroc", "auprc", "precision_at_k")
CI = 0.9
Z_CI = 1.6448536269514722  # standard-normal quantile at 0.5 + CI / 2: the weight's sd from its credible interval


def summary_rankings(edges):
    """Rankings of the pairs by posterior summaries of a ``model.grn(ci=CI)`` table, the ranking column first."""
    sd = (edges["ci_upper"] - edges["ci_lower"]).to_numpy() / (2 * Z_CI)
    prob, weight = edges["prob"].to_numpy(), edges["weight"].abs().to_numpy()
    total, total_sd = edges["total"].abs().to_numpy(), edges["total_sd"].to_numpy()
    values = {
        "score = prob x |weight| / sd (ranking column)": edges["score"].to_numpy(),
        "prob": prob,
        "|weight| / sd": weight / sd,
        "prob x |weight|": prob * weight,
        "prob^2 x |weight| / sd": prob**2 * weight / sd,
        "|total| / total_sd": total / np.maximum(total_sd, 1e-12),
        "|total|": total,
        "score ranked within its source (per-regulator normalisation)": edges.groupby("source")["score"]
        .rank(pct=True)
        .to_numpy(),
    }
    pairs = edges[["source", "target"]]
    return {name: pairs.assign(score=v) for name, v in values.items()}


def parse_variant(text):
    """``"grn_steps=1"`` -> ``("grn_steps", 1)`` (a bool for true/false, then int, then float, else the string)."""
    key, _, value = text.partition("=")
    if value.lower() in ("true", "false"):
        return key, value.lower() == "true"
    for kind in (int, float):
        try:
            return key, kind(value)
        except ValueError:
            pass
    return key, value


def fit(train, val, seed, epochs, **options):
    """The GRN model without a prior network, trained as the benchmark trains it."""
    model = pertpyro.PerturbationModel(train, grn=True, latent_dim=10, seed=seed, **options)
    model.train(
        max_epochs=epochs,
        batch_size=512,
        lr=1e-2,
        validation_adata=val,
        seed=seed,
        progress_bar=False,
        patience=15,
    )
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variants", nargs="*", default=[], help="option=value settings to compare, one fit each")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("pertpyro").setLevel(logging.ERROR)
    adata = pertpyro.datasets.papalexi2021()
    pertpyro.setup_anndata(adata, perturbation_key="perturbation", control="control", batch_key="bio_rep")
    split = split_cells(adata, seed=args.split_seed)
    train, val, test = (adata[split == s].copy() for s in ("train", "val", "test"))
    net = pertpyro.datasets.collectri()

    per_seed, diffs, summary_rows, enr_rows, stat_rows, seconds, variant_rows = [], [], [], [], [], [], []
    for seed in args.seeds:
        t0 = time.perf_counter()
        model = fit(train, val, seed, args.epochs)
        seconds.append(time.perf_counter() - t0)
        edges = model.grn(ci=CI)
        tfs = sorted(set(model.regulators) & set(net["source"]))
        reference = net[net["source"].isin(tfs) & net["target"].isin(list(adata.var_names))]
        testable = edges[edges["source"].isin(tfs)]
        natural = {"|correlation| (control cells)": correlation_baseline(train, tfs, control_only=True)}
        result = compare_rankings(
            {**model_rankings(testable), **naive_rankings(train, tfs), **natural},
            reference,
            testable_sources=tfs,
            k=args.k,
        )
        print(f"seed {seed}: trained {len(model.history_)} epochs in {seconds[-1]:.0f} s")
        print(result.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        per_seed += [[seed, *row] for row in result[["method", *METRICS]].itertuples(index=False, name=None)]
        naive = result[result["method"].isin(["|correlation|", "|knockout shift|"])]
        for name in model_rankings(testable):
            row = result[result["method"] == name].iloc[0]
            diffs.append([seed, name, *(row[m] - naive[m].max() for m in METRICS)])
        summaries = compare_rankings(summary_rankings(testable), reference, testable_sources=tfs, k=args.k)
        summary_rows += [
            [seed, *row] for row in summaries[["method", "auprc", "precision_at_k"]].iloc[:-1].itertuples(index=False)
        ]
        predicted = testable[testable["prob"] >= args.threshold]
        enr = enrichment(predicted, testable, reference)
        enr_rows.append(
            [seed, len(testable), len(reference), len(predicted), enr["tp"], enr["odds_ratio"], enr["p_value"]]
        )
        top = edges.head(args.k)
        for label, frame in ((f"top {args.k} model edges (score)", top), ("CollecTRI's testable edges", reference)):
            s = causalbench_stats(test, frame, seed=seed)
            stat_rows.append(
                [seed, label, s["n_tested"], s["frac_significant"], s["mean_wasserstein"], s["false_omission_rate"]]
            )
        if seed == args.seeds[0]:
            stat1 = edges[edges["source"] == "STAT1"].head(10)
            stat1_rows = [
                [t, sc, p, w, tot, bool(((reference["source"] == "STAT1") & (reference["target"] == t)).any())]
                for t, sc, p, w, tot in stat1[["target", "score", "prob", "weight", "total"]].itertuples(index=False)
            ]
            n_tfs, n_pairs, n_ref = len(tfs), len(testable), len(reference)
        default = result.iloc[0]
        variant_rows.append([seed, "defaults", default["auprc"], default["precision_at_k"]])
        for text in args.variants:
            key, value = parse_variant(text)
            other = fit(train, val, seed, args.epochs, **{key: value}).grn(ci=CI)
            r = compare_rankings(
                model_rankings(other[other["source"].isin(tfs)]), reference, testable_sources=tfs, k=args.k
            )
            variant_rows.append([seed, text, r["auprc"].iloc[0], r["precision_at_k"].iloc[0]])
            print(variant_rows[-1])

    d = np.array([row[2:] for row in diffs], dtype=float)
    print("paired differences to the better naive ranking (seed, ranking, AUROC, AUPRC, P@k):")
    for row in diffs:
        print(row)
    write_result(
        "grn_papalexi",
        title="Regulatory network on the Papalexi 2021 screen",
        summary=SUMMARY + f" Training took {np.mean(seconds):.0f} s per seed ({args.epochs} epochs at most).",
        tables=[
            table(
                f"Ranking of the {n_pairs:,} testable pairs ({n_tfs} knocked-out CollecTRI TFs x measured genes, "
                f"{n_ref} CollecTRI edges) against CollecTRI, per training seed; precision at the top {args.k} pairs",
                ["seed", "method", "AUROC", "AUPRC", f"precision@{args.k}"],
                per_seed,
                digits=3,
            ),
            table(
                "Paired difference of each model ranking to the better of the two naive rankings, per seed "
                f"(>= 0: at least as good as both); minimum over seeds: AUPRC {d[:, 1].min():+.3f}, "
                f"precision@{args.k} {d[:, 2].min():+.3f}",
                ["seed", "model ranking", "AUROC", "AUPRC", f"precision@{args.k}"],
                diffs,
                digits=3,
            ),
            table(
                "Posterior summaries of the same fits as rankings of the testable pairs against CollecTRI (the first "
                "is model.grn()'s ranking column; sd: the weight's posterior sd)",
                ["seed", "posterior summary", "AUPRC", f"precision@{args.k}"],
                summary_rows,
                digits=3,
            ),
            table(
                f"CollecTRI enrichment of the testable edges with posterior inclusion >= {args.threshold}",
                [
                    "seed",
                    "testable pairs",
                    "CollecTRI edges",
                    "predicted edges",
                    "CollecTRI among them",
                    "odds ratio",
                    "one-sided Fisher p",
                ],
                enr_rows,
                digits=None,
            ),
            table(
                "CausalBench-style statistics on the held-out test cells",
                ["seed", "edges", "n_tested", "fraction significant", "mean Wasserstein", "false omission rate"],
                stat_rows,
                digits=3,
            ),
            table(
                f"STAT1's 10 strongest direct edges (seed {args.seeds[0]}) and whether CollecTRI lists them",
                ["target", "score", "prob", "weight", "total", "in CollecTRI"],
                stat1_rows,
                digits=3,
            ),
            table(
                "The ranking column (score) under other settings of the block, against CollecTRI, per training seed "
                f"({args.epochs} epochs at most)",
                ["seed", "setting", "AUPRC", f"precision@{args.k}"],
                variant_rows,
                digits=3,
            ),
        ],
    )


if __name__ == "__main__":
    main()
