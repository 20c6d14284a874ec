"""GRN recovery and unseen-regulator prediction on the simulator's known network.

Run: ``python benchmarks/grn_simulator.py`` (about 5-10 minutes on 2 CPU cores). Writes
``benchmarks/results/grn_simulator_seed{SEED}.json``.

A screen with ``--targets`` perturbed regulators whose knockouts propagate through a sparse acyclic network
(``simulate(grn=True)``). ``--heldout`` targets with at least one perturbed regulator parent are held out entirely
(all their cells go to test); the model is trained on the rest. Reported: edge AUROC/AUPRC and precision at the top
``--k`` of ``model.grn()``'s two rankings (direct edges by ``score``, total effects by ``|total| / total_sd``) against
the true network over all regulator -> gene pairs, beside the |corr|, knockout-shift and random rankings (all on the
training cells); the held-out regulators' predicted shift against the true shift, with the number of their parents
perturbed in training and of the training knockouts that move their expression; the predicted ATE against the
observed test shift (the baselines cannot predict an unseen target: NaN); CausalBench-style statistics.
"""

import argparse
import logging
import time

import numpy as np
import torch
from _results import table as result_table
from _results import write_result

import pertpyro
from pertpyro.datasets import truth_shift_frame
from pertpyro.evaluation import (
    ate_metrics,
    causalbench_stats,
    compare_rankings,
    correlation_baseline,
    edge_scores,
    format_table,
    model_rankings,
    naive_rankings,
    split_heldout_perturbations,
)


def _heldout_targets(adata, n: int, seed: int) -> list[str]:
    """Targets with a regulator parent that is itself a target and at least 3 children, drawn at random."""
    truth = adata.uns["truth"]
    adj = np.asarray(truth["grn"]["adjacency"])
    n_targets = len(truth["targets"])
    parents = (adj[:n_targets, :n_targets] != 0).sum(0)
    children = (adj[:n_targets] != 0).sum(1)
    eligible = np.flatnonzero((parents > 0) & (children >= 3))
    chosen = np.random.default_rng(seed).choice(eligible, size=min(n, len(eligible)), replace=False)
    return [truth["targets"][i] for i in sorted(chosen)]


SUMMARY = (
    "A simulated screen whose knockouts propagate through a known sparse regulatory network is fitted with "
    "grn=True, with a few regulators held out entirely (never perturbed in training). The tables show how well "
    "model.grn()'s direct-edge score and total effects rank the true edges (AUROC, AUPRC, precision at the top 50) beside the |correlation|, "
    "knockout-shift and random baselines computed on the training cells; how well the held-out regulators' effects "
    "are predicted from their learned outgoing edges, against the true shift and against the observed shift of their "
    "test cells (the baselines cannot predict an unseen target); and CausalBench-style statistics of the predicted "
    "and the true edges."
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=10000)
    parser.add_argument("--genes", type=int, default=200)
    parser.add_argument("--targets", type=int, default=40)
    parser.add_argument("--heldout", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--density", type=float, default=0.05, help="prior inclusion probability of an edge")
    parser.add_argument("--weight-scale", type=float, default=1.0, help="prior sd of the edge weights")
    parser.add_argument("--k", type=int, default=50, help="precision at the top k edges")
    parser.add_argument(
        "--grn-init-lasso",
        type=float,
        default=None,
        help="PerturbationModel's grn_init_lasso (default: edges start at 0)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("pertpyro").setLevel(logging.ERROR)
    adata = pertpyro.datasets.simulate(
        n_cells=args.cells,
        n_genes=args.genes,
        n_targets=args.targets,
        n_combinations=5,
        grn=True,
        grn_steps=args.steps,
        n_truth_cells=4000,
        seed=args.seed,
    )
    pertpyro.setup_anndata(adata, batch_key="batch")
    heldout = _heldout_targets(adata, args.heldout, args.seed)
    split = split_heldout_perturbations(adata, heldout, seed=args.seed)
    train, val, test = (adata[split == s].copy() for s in ("train", "val", "test"))
    truth = adata.uns["truth"]
    print(
        f"simulate(n_cells={args.cells}, n_genes={args.genes}, n_targets={args.targets}, grn=True, "
        f"grn_steps={args.steps}, seed={args.seed}): {len(truth['grn']['source'])} true edges; held out {heldout}"
    )

    t0 = time.perf_counter()
    model = pertpyro.PerturbationModel(
        train,
        grn=True,
        grn_steps=args.steps,
        grn_density=args.density,
        grn_weight_scale=args.weight_scale,
        grn_init_lasso=args.grn_init_lasso,
        latent_dim=5,
        seed=args.seed,
    )
    model.train(
        max_epochs=args.epochs, batch_size=512, lr=args.lr, validation_adata=val, seed=args.seed, progress_bar=False
    )
    print(f"trained in {time.perf_counter() - t0:.0f} s")

    reference = pertpyro.data._simulate_grn.grn_edges(adata)
    regulators = list(truth["grn"]["regulators"])
    edges = model.grn()
    ranked = compare_rankings(
        {**model_rankings(edges), **naive_rankings(train, regulators)},
        reference,
        testable_sources=regulators,
        k=args.k,
    )
    print("\nEdge recovery over all regulator -> gene pairs (simulator truth; naive rankings on the training cells)")
    print(ranked.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    sub = edges[edges["source"].isin(heldout)]
    r_held = edge_scores(sub, reference, testable_sources=heldout)
    print(
        f"edges out of the held-out (never perturbed) regulators: AUROC {r_held['auroc']:.3f} "
        f"AUPRC {r_held['auprc']:.3f} (prevalence {r_held['prevalence']:.3f})"
    )

    predicted = model.predict_shift(heldout, n_samples=50)
    true_shift = truth_shift_frame(adata).loc[heldout]
    r_true = [np.corrcoef(predicted.loc[h], true_shift.loc[h])[0, 1] for h in heldout]
    adjacency = np.asarray(truth["grn"]["adjacency"])
    targets = list(truth["targets"])
    trained = [i for i, t in enumerate(targets) if t not in heldout]
    parents = [int((adjacency[trained, targets.index(h)] != 0).sum()) for h in heldout]
    effect = np.asarray(truth["grn"]["regulator_effect"])  # (regulators, genes): each knockout's true logit shift
    gene_names = list(adata.var_names)
    moved_by = [int((effect[trained, gene_names.index(h)] != 0).sum()) for h in heldout]
    natural = correlation_baseline(train, heldout, control_only=True)
    natural_auroc = [
        edge_scores(natural, reference[reference["source"] == h], testable_sources=[h])["auroc"] for h in heldout
    ]
    print(
        "\nUnseen regulators: Pearson of predicted vs true shift per held-out target (perturbed parents in training; "
        "training knockouts that move it; AUROC of its |corr| among control cells for its true targets):",
        ", ".join(
            f"{h} {r:.3f} ({p}; {m}; {a:.3f})"
            for h, r, p, m, a in zip(heldout, r_true, parents, moved_by, natural_auroc, strict=True)
        ),
    )
    table = ate_metrics(
        model, test, adata_train=train, predict_kwargs={"n_samples": 50}, iwelbo=False, reference="control"
    )
    print("ATE metrics on the held-out targets' test cells (baselines cannot predict unseen targets: n/a)")
    print(format_table(table))

    stats = causalbench_stats(adata, edges[edges["prob"] >= 0.5], seed=args.seed)
    print(
        "\nCausalBench-style statistics of edges with prob >= 0.5 (all cells):",
        {k: round(v, 3) for k, v in stats.items()},
    )
    true_stats = causalbench_stats(adata, reference, seed=args.seed)
    print("same statistics of the true edges:", {k: round(v, 3) for k, v in true_stats.items()})

    n_pairs, prevalence = int(ranked["n_pairs"].iloc[0]), float(ranked["prevalence"].iloc[0])
    metrics = table[(table["subset"] == "all") & (table["reference"] == "control")]
    lasso = "" if args.grn_init_lasso is None else "_lasso"
    write_result(
        f"grn_simulator{lasso}_seed{args.seed}",
        title=f"Regulatory network recovery on the simulator (seed {args.seed}"
        + ("" if args.grn_init_lasso is None else f", edges started by a Lasso, grn_init_lasso={args.grn_init_lasso}")
        + ")",
        summary=SUMMARY,
        tables=[
            result_table(
                f"Edge recovery over all {n_pairs:,} regulator -> gene pairs (prevalence {prevalence:.3f}); "
                f"simulate(n_cells={args.cells}, n_genes={args.genes}, n_targets={args.targets}, grn=True, "
                f"grn_steps={args.steps}, seed={args.seed}), {len(truth['grn']['source'])} true edges",
                ["method", "AUROC", "AUPRC", "AUPRC / random", f"precision@{args.k}"],
                ranked[["method", "auroc", "auprc", "auprc_ratio", "precision_at_k"]].itertuples(
                    index=False, name=None
                ),
                digits=3,
            ),
            result_table(
                "Edges out of the held-out (never perturbed) regulators",
                ["AUROC", "AUPRC", "prevalence"],
                [[r_held["auroc"], r_held["auprc"], r_held["prevalence"]]],
                digits=3,
            ),
            result_table(
                "Held-out regulators: Pearson of the predicted vs the true shift, the regulator's parents among the "
                "targets perturbed in training, and the training knockouts that move its expression (its outgoing "
                "edges are seen only through those knockouts; with one, they are fitted as well by direct edges "
                "from the knocked-out target: pertpyro.module._grn), and the AUROC with which the regulator's "
                "|correlation| among the training control cells ranks its true targets over the other genes (0.5: "
                "its natural variation says nothing about its targets)",
                [
                    "held-out target",
                    "Pearson",
                    "perturbed parents in training",
                    "training knockouts that move it",
                    "control-cell |corr| AUROC of its targets",
                ],
                [
                    [h, r, p, m, a]
                    for h, r, p, m, a in zip(heldout, r_true, parents, moved_by, natural_auroc, strict=True)
                ],
                digits=3,
            ),
            result_table(
                "ATE metrics on the held-out targets' test cells, control reference (the baselines cannot predict "
                "an unseen target)",
                ["method", "n_predicted", "Pearson all", "R2 all", "MSE all", "Pearson top-20", "Jaccard top-20"],
                metrics[
                    ["method", "n_predicted", "pearson_all", "r2_all", "mse_all", "pearson_topk", "jaccard_topk"]
                ].itertuples(index=False, name=None),
                digits=4,
            ),
            result_table(
                "CausalBench-style statistics (all cells)",
                ["edges", "n_tested", "fraction significant", "mean Wasserstein", "false omission rate"],
                [
                    [label, s["n_tested"], s["frac_significant"], s["mean_wasserstein"], s["false_omission_rate"]]
                    for label, s in (("predicted, prob >= 0.5", stats), ("true", true_stats))
                ],
                digits=3,
            ),
        ],
    )


if __name__ == "__main__":
    main()
