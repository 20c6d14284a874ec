"""Where the ATE intervals miss: coverage by effect size and per label, Monte-Carlo share of the width, FDR calls.

Run: ``python benchmarks/calibration_diagnosis.py --seed 1 --epochs 60`` (the numbers in benchmarks/results/uncertainty.md).
"""

import argparse

import numpy as np
import torch

import pertpyro
from pertpyro.causal import exceedance_table
from pertpyro.datasets import truth_shift_frame
from pertpyro.evaluation import interval_coverage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--patience", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(2)
    adata = pertpyro.datasets.simulate(
        n_cells=4000, n_genes=100, n_targets=8, n_combinations=2, seed=args.seed, n_truth_cells=4000
    )
    pertpyro.setup_anndata(adata, batch_key="batch")
    model = pertpyro.PerturbationModel(adata, latent_dim=5, seed=0)
    model.train(max_epochs=args.epochs, batch_size=256, lr=1e-2, seed=0, progress_bar=False, patience=args.patience)
    truth = truth_shift_frame(adata)
    labels, values = list(truth.index), truth.to_numpy()
    draws = model.ate_draws(labels, n_samples=100)
    print(f"{len(model.history_)} epochs")
    print(interval_coverage(draws, values).to_string(index=False))
    lo, hi = np.quantile(draws, [0.05, 0.95], axis=0)
    inside = (values >= lo) & (values <= hi)
    size = np.abs(values)
    for a, b in [(0, 0.02), (0.02, 0.1), (0.1, 0.3), (0.3, np.inf)]:
        k = (size >= a) & (size < b)
        print(f"|truth| in [{a}, {b}): {k.sum()} entries, 90% coverage {inside[k].mean():.3f}")
    mean = draws.mean(0)
    slopes = [np.polyfit(values[i], mean[i], 1)[0] for i in range(len(labels))]
    print("per-label slope predicted ~ true:", dict(zip(labels, np.round(slopes, 2), strict=True)))
    print("efficacy estimated:", model.efficacy_probability().to_numpy().round(2))
    print("efficacy true:     ", np.asarray(adata.uns["truth"]["efficacy_prob"]).round(2))
    for threshold in (0.05, 0.1, 0.2):
        table = exceedance_table(draws, labels, model.registry.genes, threshold=threshold, fdr=0.1)
        real = size.ravel() > threshold
        hit = table["hit"].to_numpy()
        print(f"threshold {threshold}: {hit.sum()} calls, {real.sum()} real, realised FDR {np.mean(~real[hit]):.3f}")
    with torch.no_grad():
        model.guide.effect_raw_scale.fill_(-20.0)  # collapse the posterior: what is left is Monte-Carlo noise
        model.guide.efficacy_raw_scale.fill_(-20.0)
    noise = model.ate_draws(labels, n_samples=100)
    print(f"median sd of an ATE draw: {np.median(draws.std(0)):.4f}; Monte-Carlo only: {np.median(noise.std(0)):.4f}")


if __name__ == "__main__":
    main()
