"""Recovery of the simulator's true intent-to-treat shifts by the default model.

Run: ``python benchmarks/simulator_recovery.py``. Writes ``benchmarks/results/simulator_recovery.json``.
"""

import argparse

import numpy as np
import torch
from _results import table, write_result

import pertpyro
from pertpyro.datasets import truth_shift_frame

SUMMARY = (
    "A simulated screen with known effects (basal states, sparse effects, knockout efficacy below 1, two-target "
    "combinations, negative binomial counts) is fitted with the default PerturbationModel. The table shows how well "
    "the predicted intent-to-treat shifts of mean log1p(1e4 x / sum x) match the true ones (Pearson over labels x "
    "genes, over the combinations, and the median slope for the strong targets) and the error of the estimated "
    "per-target efficacy."
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=6000)
    parser.add_argument("--genes", type=int, default=200)
    parser.add_argument("--targets", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    adata = pertpyro.datasets.simulate(
        n_cells=args.cells, n_genes=args.genes, n_targets=args.targets, n_combinations=3, seed=args.seed
    )
    pertpyro.setup_anndata(adata, batch_key="batch")
    model = pertpyro.PerturbationModel(adata, latent_dim=5, seed=args.seed)
    model.train(max_epochs=100, batch_size=512, lr=5e-3, seed=args.seed, progress_bar=False)
    truth = truth_shift_frame(adata)
    predicted = model.predict_shift(list(truth.index), n_samples=50, basal="control")  # the truth: population ATEs
    t = adata.uns["truth"]
    strong = [x for x, s in zip(t["targets"], t["strong"], strict=True) if s]
    r_all = np.corrcoef(truth.to_numpy().ravel(), predicted.to_numpy().ravel())[0, 1]
    slopes = [np.polyfit(truth.loc[x], predicted.loc[x], 1)[0] for x in strong]
    combos = [p for p in truth.index if "+" in p]
    r_combo = np.corrcoef(truth.loc[combos].to_numpy().ravel(), predicted.loc[combos].to_numpy().ravel())[0, 1]
    rho_err = np.abs(model.efficacy_probability().to_numpy() - np.asarray(t["efficacy_prob"]))
    print(f"simulate(n_cells={args.cells}, n_genes={args.genes}, n_targets={args.targets}, seed={args.seed})")
    print(f"Pearson of predicted vs true shifts over labels x genes: {r_all:.3f}")
    print(f"median slope predicted ~ true over {len(strong)} strong targets: {np.median(slopes):.2f}")
    print(f"Pearson over the {len(combos)} combinations: {r_combo:.3f}")
    efficacy_error = rho_err[np.asarray(t["strong"], bool)].mean()
    print(f"efficacy: mean |estimated - true| over strong targets {efficacy_error:.3f}")
    write_result(
        "simulator_recovery",
        title="Recovery of known effects on the simulator",
        summary=SUMMARY,
        tables=[
            table(
                f"simulate(n_cells={args.cells}, n_genes={args.genes}, n_targets={args.targets}, n_combinations=3, "
                f"seed={args.seed}); {len(strong)} strong targets",
                ["quantity", "value"],
                [
                    ["Pearson of predicted vs true shifts, all labels x genes", round(float(r_all), 3)],
                    ["Pearson over the two-target combinations", round(float(r_combo), 3)],
                    ["median slope of predicted on true shifts, strong targets", round(float(np.median(slopes)), 2)],
                    ["mean absolute error of the estimated efficacy, strong targets", round(float(efficacy_error), 3)],
                ],
            )
        ],
    )


if __name__ == "__main__":
    main()
