"""README figures: the model trained on the Papalexi 2021 random split, as ``configs/papalexi.yaml`` trains it.

Usage: ``python benchmarks/readme_figure.py [--out docs/figures] [--max-epochs 100] [--n-samples 100] [--threads 1]``

Writes ``papalexi_ate.png`` (posterior mean ATE of the six strong knockouts on their 25 most affected genes, with
90 % credible intervals marking credible effects) and ``papalexi_training.png`` (negative ELBO per cell per epoch).
Takes a few minutes on one CPU thread.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch

import pertpyro
from pertpyro import plotting

ROOT = Path(__file__).resolve().parents[1]
STRONG = ["STAT1", "JAK2", "IFNGR1", "IFNGR2", "SMAD4", "IRF1"]
# configs/papalexi.yaml
MODEL = {"latent_dim": 10, "n_hidden": 128, "sparse_effects": False, "efficacy": True}
TRAIN = {"batch_size": 512, "lr": 5e-3, "seed": 0, "early_stopping": True, "patience": 15}
SPLIT_SEED = 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "figures")
    parser.add_argument("--max-epochs", type=int, default=100)
    parser.add_argument("--n-samples", type=int, default=100)
    parser.add_argument("--top-n", type=int, default=25)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (leave cores to others)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    torch.set_num_threads(args.threads)

    start = time.perf_counter()
    adata = pertpyro.datasets.papalexi2021()
    pertpyro.setup_anndata(adata, perturbation_key="perturbation", control="control", batch_key="bio_rep")
    split = pertpyro.evaluation.split_cells(adata, seed=SPLIT_SEED)
    train, val = (adata[(split == s).to_numpy()].copy() for s in ("train", "val"))

    model = pertpyro.PerturbationModel(train, **MODEL)
    history = model.train(max_epochs=args.max_epochs, validation_adata=val, progress_bar=False, **TRAIN)
    best = history.loc[history["val_loss"].idxmin()]
    print(f"trained {len(history)} epochs; best validation -ELBO/cell {best.val_loss:.2f} at epoch {best.epoch:.0f}")

    ate = model.ate(STRONG, n_samples=args.n_samples, ci=0.9)
    args.out.mkdir(parents=True, exist_ok=True)
    fig = plotting.ate_dotplot(ate, top_n=args.top_n, perturbations=STRONG)
    fig.axes[0].set_title(
        f"Papalexi 2021: effect of six knockouts on their {args.top_n} most affected genes (90 % intervals)",
        fontsize=10,
        pad=22,
    )
    fig.savefig(args.out / "papalexi_ate.png", dpi=150, bbox_inches="tight")
    fig = plotting.training_curves(history)
    fig.axes[0].set_title("Papalexi 2021, random split: training")
    fig.savefig(args.out / "papalexi_training.png", dpi=150, bbox_inches="tight")

    credible = ((ate["lower"] > 0) | (ate["upper"] < 0)).groupby(ate["perturbation"]).sum()
    print("credible effects per knockout (of", adata.n_vars, "genes):", credible.reindex(STRONG).to_dict())
    print("efficacy:", model.efficacy_probability().reindex(STRONG).round(3).to_dict())
    print(f"wrote {args.out / 'papalexi_ate.png'} and {args.out / 'papalexi_training.png'}")
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
