"""Per-cell responder calls on the Papalexi screen: pertpyro's efficacy posterior beside pertpy's Mixscape.

Mixscape's calls come from ``benchmarks/mixscape_calls.py``, run first in its own environment (pertpy is no
dependency of pertpyro)::

    OMP_NUM_THREADS=1 /work/venvs/mixscape/bin/python benchmarks/mixscape_calls.py
    python benchmarks/mixscape_papalexi.py --seeds 0 1

For each split seed the shipped screen is split 64/16/20 (``configs/papalexi.yaml``, its split with that seed) and
pertpyro is fitted on the training cells with the config's settings (validation cells for early stopping; fitted
models are kept in ``--models`` and reused). A cell is a pertpyro responder when its posterior
``P(efficacy = 1 | counts)`` (``model.efficacy_probability(per="cell", adata=...)``, training and held-out cells
scored by the model of their split) exceeds ``--threshold``; a Mixscape responder when Mixscape classes it ``KO``
(posterior of ``KO`` > 0.5; Mixscape runs once on the whole screen, unsupervised, as users run it). Reported
(definitions in :mod:`pertpyro.evaluation._responders`):

- agreement per target (fraction of cells called alike, Cohen's kappa, responder fractions) on all cells;
- the held-out effect of each method's responders, per target and summarised, with "every cell" (intent-to-treat,
  the training mean) as the reference, and paired differences pertpyro - Mixscape over (seed, target) pairs.

Writes ``benchmarks/results/mixscape_papalexi.json``.
"""

import argparse
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from _results import table, write_result
from defaults_papalexi import train_config

from pertpyro.cli import load_config, make_split
from pertpyro.evaluation import call_agreement, paired_differences, responder_effects
from pertpyro.evaluation._responders import EFFECT_COLUMNS
from pertpyro.model import PerturbationModel
from pertpyro.runs import load_data, subsets

ROOT = Path(__file__).resolve().parents[1]
FIGURE = "docs/figures/mixscape_papalexi.png"
METHODS = ("pertpyro", "Mixscape", "every cell")
METRICS = list(EFFECT_COLUMNS[EFFECT_COLUMNS.index("pearson_all") :])  # responder_effects' metric columns
LOWER_IS_BETTER = {"mse_all", "nonresponder_effect", "target_responders"}


def fit_or_load(folder: Path, parts: dict, config: dict, epochs: int | None) -> PerturbationModel:
    if (folder / "model.pt").exists():
        return PerturbationModel.load(folder, parts["train"])
    model, elapsed = train_config(parts, config, epochs)
    model.save(folder, overwrite=True)
    print(
        f"fit {folder.name}: {elapsed:.0f} s, {0 if model.history_ is None else len(model.history_)} epochs",
        flush=True,
    )
    return model


def pertpyro_probabilities(model: PerturbationModel, parts: dict, folder: Path, n_samples: int) -> pd.Series:
    """Per-cell P(efficacy = 1) of every cell of the split, cached in ``folder/efficacy_cells.csv``."""
    cache = folder / "efficacy_cells.csv"
    if cache.exists():
        return pd.read_csv(cache, index_col=0).iloc[:, 0]
    start = time.perf_counter()
    probs = pd.concat(
        [model.efficacy_probability("cell", parts[s], n_samples=n_samples, seed=0) for s in ("train", "val", "test")]
    )
    print(f"per-cell efficacy of {len(probs)} cells: {time.perf_counter() - start:.0f} s", flush=True)
    probs.to_csv(cache)
    return probs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--config", default="configs/papalexi.yaml")
    parser.add_argument("--calls", default=str(ROOT / "benchmarks" / "cache" / "mixscape_papalexi.csv"))
    parser.add_argument("--models", default="runs/mixscape_papalexi", help="fitted models are kept (and reused) here")
    parser.add_argument("--epochs", type=int, default=None, help="override the config's max_epochs")
    parser.add_argument("--samples", type=int, default=30, help="importance samples per cell of the efficacy posterior")
    parser.add_argument("--threshold", type=float, default=0.5, help="pertpyro responder: P(efficacy = 1) above this")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    mixscape = pd.read_csv(args.calls, index_col=0)
    meta = json.loads(Path(args.calls).with_suffix(".json").read_text())
    agreement, effects, calls_by_seed, guide_rows = [], [], {}, []
    for seed in args.seeds:
        config = load_config(args.config)
        config["split"]["seed"] = seed
        adata = load_data(config, negative_controls=False)
        parts = subsets(adata, make_split(adata, config))
        folder = Path(args.models) / f"seed{seed}"
        model = fit_or_load(folder, parts, config, args.epochs)
        probs = pertpyro_probabilities(model, parts, folder, args.samples)
        control = model.registry.control
        labels = adata.obs[model.registry.perturbation_key].astype(str)
        perturbed = labels != control
        ours = (probs.reindex(adata.obs_names) > args.threshold).where(perturbed)
        theirs = (mixscape["mixscape_class_global"].reindex(adata.obs_names) == "KO").where(perturbed)
        if theirs[perturbed].isna().any():
            raise ValueError(f"{args.calls} lacks calls for cells of the screen: rerun benchmarks/mixscape_calls.py.")
        table_ = call_agreement(ours, theirs, labels, control=control, names=("pertpyro", "Mixscape"))
        agreement.append(table_.assign(seed=seed))
        calls_by_seed[seed] = (ours, theirs, labels, control)
        guide_rows.append(per_guide(model, adata, ours, theirs, labels, control).assign(seed=seed))
        every = pd.Series(True, index=adata.obs_names).where(perturbed)
        for method, calls in zip(METHODS, (ours, theirs, every), strict=True):
            per = responder_effects(parts["train"], parts["test"], calls, calls)
            effects.append(per.assign(seed=seed, method=method).reset_index())
        print(table_.round(3).to_string(), flush=True)
    agree = pd.concat(agreement)
    per_target = pd.concat(effects, ignore_index=True)
    write(args, meta, agree, per_target, calls_by_seed, pd.concat(guide_rows))


def per_guide(
    model: PerturbationModel, adata, ours: pd.Series, theirs: pd.Series, labels: pd.Series, control: str
) -> pd.DataFrame:
    """Per targeting guide: cells, each method's responder fraction, pertpyro's per-guide response rate."""
    guide_key = model.registry.guide_key
    if guide_key is None:
        return pd.DataFrame()
    guides = adata.obs[guide_key].astype(str)
    cells = labels != control
    frame = pd.DataFrame(
        {
            "target": labels[cells],
            "guide": guides[cells],
            "pertpyro": ours[cells].astype(float),
            "Mixscape": theirs[cells].astype(float),
        }
    )
    out = frame.groupby(["target", "guide"]).agg(
        cells=("pertpyro", "size"), pertpyro=("pertpyro", "mean"), Mixscape=("Mixscape", "mean")
    )
    rates = model.efficacy_probability("guide") if model.init_kwargs.get("efficacy_per_guide") else None
    out["rate"] = np.nan if rates is None else rates["median"].reindex(out.index.get_level_values("guide")).to_numpy()
    return out.reset_index()


def write(
    args: argparse.Namespace,
    meta: dict,
    agree: pd.DataFrame,
    per_target: pd.DataFrame,
    calls_by_seed: dict,
    guides: pd.DataFrame,
) -> None:
    seeds = sorted(agree["seed"].unique())
    # agreement: one row per target, the seeds side by side
    agreement_rows = []
    for target in agree.index.unique():
        rows = agree.loc[[target]].set_index("seed")
        agreement_rows.append(
            [
                target,
                int(rows["n_cells"].iloc[0]),
                rows["responders_Mixscape"].iloc[0],
                *[rows.at[s, "responders_pertpyro"] for s in seeds],
                *[rows.at[s, "agreement"] for s in seeds],
                *[rows.at[s, "kappa"] for s in seeds],
            ]
        )
    # held-out effects: targets where both methods call responders and escapers in both parts of every split
    both = per_target.pivot_table(
        index=["seed", "perturbation"], columns="method", values="nonresponder_effect", aggfunc="first"
    )
    separated = both[["pertpyro", "Mixscape"]].notna().all(axis=1)
    responders = per_target.pivot_table(
        index=["seed", "perturbation"], columns="method", values="responders_train", aggfunc="first"
    )
    separated &= (responders[["pertpyro", "Mixscape"]] > 0).all(axis=1)
    shared = sorted({t for (_, t), ok in separated.items() if ok and separated.xs(t, level=1).all()})
    pooled = []  # the calls of the shared targets' cells pooled, per seed
    for seed in seeds:
        ours, theirs, labels, control = calls_by_seed[seed]
        cells = labels.isin([*shared, control])
        pooled.append(call_agreement(ours[cells], theirs[cells], labels[cells], control=control).loc["all"])
    agreement_rows.append(
        [
            "separated targets",
            int(pooled[0]["n_cells"]),
            pooled[0]["responders_b"],
            *[p["responders_a"] for p in pooled],
            *[p["agreement"] for p in pooled],
            *[p["kappa"] for p in pooled],
        ]
    )
    subset = per_target[per_target["perturbation"].isin(shared)]
    summary_rows = []
    for method in METHODS:
        rows = subset[subset["method"] == method]
        summary_rows.append([method, len(rows), *rows[["responders_test", *METRICS]].mean().tolist()])
    long = subset.assign(pair=subset["seed"].astype(str) + ":" + subset["perturbation"])
    paired = paired_differences(
        long,
        model="pertpyro",
        baselines=("Mixscape", "every cell"),
        metrics=METRICS,
        by=(),
        split_column="pair",
    )
    paired_rows = [
        [r.baseline_method, r.metric, int(r.n_splits), r.model, r.baseline, r.difference, r.lower, r.upper]
        for r in paired.itertuples(index=False)
        if r.n_splits > 0  # 'every cell' has no non-responders
    ]
    detail = subset.groupby(["perturbation", "method"], sort=True)[["responders_test", *METRICS]].mean().reset_index()
    detail_rows = detail.to_numpy().tolist()
    guide_table = []
    if len(guides):
        by_guide = guides[guides["target"].isin(shared)].groupby(["target", "guide"], sort=True)
        mean = by_guide[["cells", "Mixscape", "pertpyro", "rate"]].mean().reset_index()
        with_rates = bool(mean["rate"].notna().any())  # per-guide response rates in the model
        guide_table = [
            [r.target, r.guide, int(r.cells), r.Mixscape, r.pertpyro, *([r.rate] if with_rates else [])]
            for r in mean.itertuples()
        ]
        both = mean[["Mixscape", "pertpyro"]].to_numpy()
        guide_corr = float(np.corrcoef(both.T)[0, 1])
        centred = mean[["Mixscape", "pertpyro"]] - mean.groupby("target")[["Mixscape", "pertpyro"]].transform("mean")
        within_corr = float(np.corrcoef(centred.to_numpy().T)[0, 1])
        print(f"guides: Pearson {guide_corr:.3f}, within targets {within_corr:.3f}", flush=True)
    _figure(detail, shared)
    print(pd.DataFrame(summary_rows).round(3).to_string(), flush=True)
    print(paired.round(4).to_string(), flush=True)
    first = agree[(agree["seed"] == seeds[0]) & (agree.index != "all")]
    n_all_ours = int((first["responders_pertpyro"] == 1.0).sum())
    n_none_theirs = int((first["responders_Mixscape"] == 0.0).sum())
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    seed_cols = [f"seed {s}" for s in seeds]
    write_result(
        "mixscape_papalexi",
        title="Per-cell responder calls on Papalexi: pertpyro's efficacy posterior beside Mixscape",
        summary=(
            "The shipped Papalexi 2021 screen (20,729 cells x 299 genes, 25 knockouts). Mixscape (pertpy's workflow: "
            "perturbation signature against the 20 nearest control cells within each replicate, then mixscape; "
            f"{versions}; calls from `{meta['command']}`) classes each perturbed cell KO or NP; pertpyro "
            "(configs/papalexi.yaml fitted on the training cells of each split seed) calls a cell a responder when "
            f"its posterior P(efficacy = 1 | counts) exceeds {args.threshold}. The first table compares the calls on "
            f"all cells per target. pertpyro calls every cell a responder for {n_all_ours} targets (those without "
            f"escapers in the model), Mixscape none for {n_none_theirs} (fewer than 5 differentially expressed "
            "genes); where neither separates cells, kappa is empty. The others "
            "take the targets where both methods separate responders from escapers on the training and held-out "
            f"cells of both splits ({', '.join(shared)}): the shift of a method's training responders as the "
            "prediction of its held-out responders' shift (Pearson over all genes, over the 20 largest, MSE); the "
            "held-out responders' and non-responders' shifts on the training intent-to-treat yardstick (all "
            "held-out cells of the target = 1; non-responders near 0 means the escapers carry no effect); and the "
            "held-out shift of the target gene itself (log1p scale; empty for targets that are not measured genes). "
            "'every cell' calls every perturbed cell a responder (the training mean). Paired differences are "
            "pertpyro minus the other method over (split seed, target) pairs with 95% t intervals."
        ),
        figure=FIGURE,
        tables=[
            table(
                "Agreement of the calls per target (all cells; pertpyro per split seed)",
                [
                    "target",
                    "cells",
                    "Mixscape responders",
                    *[f"pertpyro responders, {c}" for c in seed_cols],
                    *[f"agreement, {c}" for c in seed_cols],
                    *[f"kappa, {c}" for c in seed_cols],
                ],
                agreement_rows,
                digits=3,
            ),
            table(
                "Held-out effect of each method's responders, mean over the shared targets and split seeds",
                ["method", "target x seed", "held-out responders", *METRICS],
                summary_rows,
                digits=4,
            ),
            table(
                "Paired differences, pertpyro minus the other method (95% t interval over target x seed pairs)",
                ["other method", "metric", "pairs", "pertpyro", "other", "difference", "lower", "upper"],
                paired_rows,
                digits=4,
            ),
            *(
                [
                    table(
                        "Per guide of the shared targets: responder fractions (all cells"
                        + ("; pertpyro's per-guide response rate, posterior median" if with_rates else "")
                        + f"; means over split seeds). Pearson of the two methods' "
                        f"fractions across guides: {guide_corr:.3f}; of their differences from the target's mean "
                        f"(guide strength within a target): {within_corr:.3f}",
                        [
                            "target",
                            "guide",
                            "cells",
                            "Mixscape responders",
                            "pertpyro responders",
                            *(["pertpyro rate"] if with_rates else []),
                        ],
                        guide_table,
                        digits=3,
                    )
                ]
                if guide_table
                else []
            ),
            table(
                "Per target (mean over split seeds)",
                ["target", "method", "held-out responders", *METRICS],
                detail_rows,
                digits=4,
            ),
        ],
    )


def _figure(detail: pd.DataFrame, targets: list[str]) -> None:
    """Held-out responders' and non-responders' share of the effect per target, each method (mean over seeds)."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), sharey=False)
    x = np.arange(len(targets))
    panels = (
        ("responder_effect", "held-out responders"),
        ("nonresponder_effect", "held-out non-responders"),
    )
    for ax, (metric, title) in zip(axes, panels, strict=True):
        for offset, method in zip((-0.2, 0.2), ("pertpyro", "Mixscape"), strict=True):
            values = detail[detail["method"] == method].set_index("perturbation")[metric].reindex(targets)
            ax.bar(x + offset, values, width=0.4, label=method)
        ax.axhline(1.0 if metric == "responder_effect" else 0.0, color="grey", lw=0.8, ls="--")
        ax.set_xticks(x, targets, rotation=45, ha="right")
        ax.set_title(f"{title}: share of the effect", fontsize=10)
    axes[0].set_ylabel("shift on the ITT yardstick (all = 1)")
    axes[1].legend(frameon=False, fontsize=8)
    fig.tight_layout()
    fig.savefig(ROOT / FIGURE, dpi=130)
    plt.close(fig)


if __name__ == "__main__":
    main()
