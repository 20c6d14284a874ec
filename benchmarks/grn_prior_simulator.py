"""What a noisy prior network adds to unseen regulators' predicted effects on the simulator, and how it is weighed.

Run: ``python benchmarks/grn_prior_simulator.py [--seed 0]`` (two fits, about 5-15 minutes on 2 CPU cores).
Writes ``benchmarks/results/grn_prior_simulator_seed{SEED}.json``.

The screen and held-out regulators of ``benchmarks/grn_simulator.py``. A prior network is drawn as a curated one
would be: a fraction ``--recall`` of the true edges, plus as many false (regulator, gene) pairs times
``--false-ratio``. The model is fitted without and with it (``grn_prior``) on the same training cells. Reported:
each held-out (never perturbed) regulator's Pearson of the predicted with the true shift under both fits, and the
learned reliability of the prior (``model.grn_prior_reliability()``). The prior-informed network is not scored on
edges: its prior holds true edges, so that score would be circular.
"""

import argparse
import logging
import time

import numpy as np
import pandas as pd
import torch
from _results import table, write_result
from grn_simulator import _heldout_targets

import pertpyro
from pertpyro.data._simulate_grn import grn_edges
from pertpyro.datasets import truth_shift_frame
from pertpyro.evaluation import split_heldout_perturbations

SUMMARY = (
    "A simulated screen whose knockouts propagate through a known network is fitted with grn=True, with a few "
    "regulators never perturbed in training, once without a prior network and once with a noisy one (part of the "
    "true edges and as many false ones). The tables give each unseen regulator's predicted-vs-true shift Pearson "
    "under both fits and how far the model learned to believe the prior's edges."
)


def noisy_prior(adata, *, recall: float, false_ratio: float, seed: int) -> pd.DataFrame:
    """A fraction ``recall`` of the true edges and ``false_ratio`` times as many false pairs, shuffled."""
    rng = np.random.default_rng(seed)
    truth = grn_edges(adata)
    kept = truth.iloc[rng.permutation(len(truth))[: int(round(recall * len(truth)))]][["source", "target"]]
    regulators, genes = list(adata.uns["truth"]["grn"]["regulators"]), list(adata.var_names)
    listed = set(zip(truth["source"], truth["target"], strict=True))
    candidates = [(r, g) for r in regulators for g in genes if r != g and (r, g) not in listed]
    pick = rng.choice(len(candidates), size=int(round(false_ratio * len(kept))), replace=False)
    false = pd.DataFrame([candidates[i] for i in pick], columns=["source", "target"])
    return pd.concat([kept, false], ignore_index=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=6000)
    parser.add_argument("--genes", type=int, default=200)
    parser.add_argument("--targets", type=int, default=32)
    parser.add_argument("--heldout", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--recall", type=float, default=0.5)
    parser.add_argument("--false-ratio", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("pertpyro").setLevel(logging.ERROR)
    adata = pertpyro.datasets.simulate(
        n_cells=args.cells,
        n_genes=args.genes,
        n_targets=args.targets,
        n_combinations=5,
        grn=True,
        n_truth_cells=4000,
        seed=args.seed,
    )
    pertpyro.setup_anndata(adata, batch_key="batch")
    heldout = _heldout_targets(adata, args.heldout, args.seed)
    split = split_heldout_perturbations(adata, heldout, seed=args.seed)
    train, val = (adata[split == s].copy() for s in ("train", "val"))
    prior = noisy_prior(adata, recall=args.recall, false_ratio=args.false_ratio, seed=args.seed)
    true_shift = truth_shift_frame(adata).loc[heldout]
    pearson, reliability, seconds = {}, None, []
    for name, network in (("no prior", None), ("noisy prior", prior)):
        t0 = time.perf_counter()
        model = pertpyro.PerturbationModel(train, grn=True, grn_prior=network, latent_dim=5, seed=args.seed)
        model.train(
            max_epochs=args.epochs, batch_size=512, lr=1e-2, validation_adata=val, seed=args.seed, progress_bar=False
        )
        seconds.append(time.perf_counter() - t0)
        predicted = model.predict_shift(heldout, n_samples=50)
        pearson[name] = [float(np.corrcoef(predicted.loc[h], true_shift.loc[h])[0, 1]) for h in heldout]
        print(name, dict(zip(heldout, np.round(pearson[name], 3), strict=True)))
        if network is not None:
            reliability = model.grn_prior_reliability()
            print("learned reliability:", reliability)
    truth = grn_edges(adata)
    write_result(
        f"grn_prior_simulator_seed{args.seed}",
        title=f"A noisy prior network and unseen regulators on the simulator (seed {args.seed})",
        summary=SUMMARY + f" Each fit took {np.mean(seconds):.0f} s.",
        tables=[
            table(
                f"Held-out regulators: Pearson of the predicted vs the true shift; prior network: {args.recall:.0%} of "
                f"the {len(truth)} true edges plus {args.false_ratio:g} false pair(s) per listed true edge",
                ["held-out target", "no prior", "noisy prior"],
                [[h, a, b] for h, a, b in zip(heldout, pearson["no prior"], pearson["noisy prior"], strict=True)],
                digits=3,
            ),
            table(
                "Learned reliability of the prior network (grn_prior_reliability): prior inclusion of a listed pair "
                "(started at grn_prior_inclusion = 0.5) and of an unlisted one",
                ["listed pairs", "listed pair inclusion", "unlisted pair inclusion", "odds ratio"],
                [
                    [
                        reliability["n_prior_edges"],
                        reliability["prior_edge_inclusion"],
                        reliability["other_inclusion"],
                        reliability["odds_ratio"],
                    ]
                ],
                digits=3,
            ),
        ],
    )


if __name__ == "__main__":
    main()
