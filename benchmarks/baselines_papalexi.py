"""Baselines on the shipped Papalexi 2021 screen, with the ANCHORS split and metrics; prints markdown tables.

Usage: ``python benchmarks/baselines_papalexi.py [--seed 0] [--per-perturbation]``

Reproduces ``../shared/ANCHORS.md``: split_cells(seed=0) (64/16/20 per label), baselines fitted on the training cells,
shifts and metrics on the test cells, mean over the 25 knockouts.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import anndata as ad

import pertpyro
from pertpyro._keys import REGISTRY_KEY
from pertpyro.data._registry import Registry
from pertpyro.evaluation import ate_metrics, format_table, split_cells

DATA = Path(pertpyro.__file__).parent / "data" / "files" / "papalexi2021_thp1_lowmoi.h5ad"

ANCHORS = {  # ../shared/ANCHORS.md: (Pearson all, Pearson top-20, MSE all)
    "no_change": (float("nan"), float("nan"), 0.0515),
    "training_mean": (0.330, 0.472, 0.0356),
    "shrunk_training_mean": (0.342, 0.498, 0.0320),
}


def load() -> ad.AnnData:
    adata = ad.read_h5ad(DATA)
    try:
        from pertpyro.data._setup import setup_anndata
    except ImportError:  # before setup_anndata existed: write the registry by hand
        labels = sorted(set(adata.obs["perturbation"].astype(str)) - {"control"})
        adata.uns[REGISTRY_KEY] = Registry(
            perturbation_key="perturbation",
            control="control",
            delimiter="+",
            targets=tuple(labels),
            genes=tuple(adata.var_names.astype(str)),
        ).to_dict()
    else:
        setup_anndata(adata, perturbation_key="perturbation", control="control")
    return adata


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-perturbation", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")

    start = time.perf_counter()
    adata = load()
    split = split_cells(adata, seed=args.seed)
    train = adata[(split == "train").to_numpy()].copy()
    test = adata[(split == "test").to_numpy()].copy()
    print(f"cells: train {train.n_obs}, val {(split == 'val').sum()}, test {test.n_obs}; genes {adata.n_vars}\n")

    table = ate_metrics(None, test, adata_train=train, reference=("control", "perturbed"))
    print(format_table(table.drop(columns=["r2_topk", "mse_topk"])))

    rows = table[(table["subset"] == "all") & (table["reference"] == "control")].set_index("method")
    print("vs ANCHORS (control reference, all 25 knockouts): ours / anchor")
    print("| method | Pearson all | Pearson top-20 | MSE all |\n| --- | --- | --- | --- |")
    for method, (p_all, p_top, mse) in ANCHORS.items():
        r = rows.loc[method]
        print(
            f"| {method} | {r.pearson_all:.4f} / {p_all:.3f} | {r.pearson_topk:.4f} / {p_top:.3f} "
            f"| {r.mse_all:.4f} / {mse:.4f} |"
        )
    if args.per_perturbation:
        per = ate_metrics(None, test, adata_train=train, per_perturbation=True)
        print()
        print(format_table(per[per["method"] == "shrunk_training_mean"]))
    print(f"\n({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
