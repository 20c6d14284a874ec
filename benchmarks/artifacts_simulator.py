"""The artifact block on the simulator: detection from noisy labels, counterfactual cleaning, ATE recovery.

A screen with 10% doublets and 10% low-quality cells, scored by :func:`pertpyro.pp.qc` (Scrublet's
``doublet_score`` and the QC metrics), whose given artifact labels are the truth with a fraction ``--flip`` flipped at
random, is fitted twice: without the artifact block and with it in the latent mode (the labels its only evidence;
with ``--evidence``, Scrublet's score too). Reported:

- artifact AUROC / AUPRC of ``artifact_probability()`` against the truth (and of the given labels), and for
  doublets and low-quality cells separately beside Scrublet's score;
- energy distance of cleaned artifact cells (``counterfactual(do={"artifact": 0})``, one posterior draw per cell)
  to the true clean counts of the same cells, against that of the raw artifact cells;
- QC pass rate (``pertpyro.evaluation.qc_pass_rate``, thresholds from the true clean cells) of raw, cleaned and
  generated cells;
- recovery of the true intent-to-treat shifts (Pearson over labels x genes) with and without the block;
- the IWELBO of the counts (labels left out) of both models, the artifact states summed out for the block.

Both models get the same fixed training budget (200 epochs of batch 512, no early stopping), so that the comparison
does not depend on where early stopping on a small validation split halts each of them.

The true shifts are those of clean cells (``uns["truth"]["shift"]``: fresh cells of the clean simulator, no
artifacts), which is what the model with the block estimates (effects among clean cells, ``do(artifact=0)`` in both
arms, at clean cells' depths); the model without the block estimates the shift over all cells, artifacts included.

Run: ``python benchmarks/artifacts_simulator.py --seed 0 1 2`` (``--help`` for sizes). Writes
``benchmarks/results/artifacts_simulator.json`` (one column per seed; ``--json`` also keeps one seed's raw numbers).
"""

import argparse
import json
import time

import numpy as np
import torch
from _results import table, write_result

import pertpyro
from pertpyro.datasets import truth_shift_frame
from pertpyro.evaluation import artifact_detection, energy_distance, qc_pass_rate


def _recovery(model: pertpyro.PerturbationModel, truth) -> tuple[float, float]:
    """Pearson of predicted vs true shifts (labels x genes) and the least-squares slope of predicted on true."""
    predicted = model.predict_shift(list(truth.index), n_samples=30, basal="control").to_numpy().ravel()
    true = truth.to_numpy().ravel()
    return float(np.corrcoef(true, predicted)[0, 1]), float(true @ predicted / (true @ true))


ROWS = [  # (label, key in the per-seed numbers)
    ("AUROC of the given (flipped) labels", "label_auroc"),
    ("artifact AUROC, artifact_probability()", "artifact_auroc"),
    ("artifact AUPRC", "artifact_auprc"),
    ("AUROC doublets vs clean", "auroc_doublet_vs_clean"),
    ("AUROC doublets vs clean, P(doublet)", "kind_auroc_doublet_vs_clean"),
    ("AUROC doublets vs clean, Scrublet's doublet_score", "scrublet_auroc_doublet_vs_clean"),
    ("AUPRC doublets vs clean", "auprc_doublet_vs_clean"),
    ("AUPRC doublets vs clean, P(doublet)", "kind_auprc_doublet_vs_clean"),
    ("AUPRC doublets vs clean, Scrublet's doublet_score", "scrublet_auprc_doublet_vs_clean"),
    ("AUROC low-quality vs clean", "auroc_low_quality_vs_clean"),
    ("AUROC low-quality vs clean, Scrublet's doublet_score", "scrublet_auroc_low_quality_vs_clean"),
    ("AUPRC low-quality vs clean", "auprc_low_quality_vs_clean"),
    ("AUPRC low-quality vs clean, Scrublet's doublet_score", "scrublet_auprc_low_quality_vs_clean"),
    ("learned flip rate P(label 1 | clean)", ("flip_rates_learned", 0)),
    ("learned flip rate P(label 0 | artifact)", ("flip_rates_learned", 1)),
    ("energy distance to true clean counts, raw doublets", "energy_raw_doublet"),
    ("energy distance, doublets cleaned by do(artifact=0)", "energy_cleaned_doublet"),
    ("energy distance, raw low-quality cells", "energy_raw_low_quality"),
    ("energy distance, low-quality cells cleaned by do(artifact=0)", "energy_cleaned_low_quality"),
    ("QC pass rate, raw low-quality cells", "qc_pass_raw_low_quality"),
    ("QC pass rate, cleaned low-quality cells", "qc_pass_cleaned_low_quality"),
    ("QC pass rate, raw doublets", "qc_pass_raw_doublet"),
    ("QC pass rate, cleaned doublets", "qc_pass_cleaned_doublet"),
    ("QC pass rate of generated control cells, without the block", "qc_pass_generated_plain"),
    ("QC pass rate of generated control cells, with the block", "qc_pass_generated_block"),
    ("QC pass rate of the true clean cells", "qc_pass_clean_cells"),
    ("IWELBO of the counts (nats per cell), without the block", "iwelbo_plain"),
    ("IWELBO of the counts (nats per cell), with the block", "iwelbo_block"),
    ("ATE recovery (Pearson vs true clean-cell shifts), without the block", "ate_pearson_plain"),
    ("ATE recovery (Pearson vs true clean-cell shifts), with the block", "ate_pearson_block"),
    ("slope of predicted on true shifts, without the block", "ate_slope_plain"),
    ("slope of predicted on true shifts, with the block", "ate_slope_block"),
]
SUMMARY = (
    "A simulated screen with 10% doublets and 10% low-quality cells, scored by pp.qc (Scrublet's doublet score), "
    "whose given artifact labels are partly flipped at random, is fitted twice with the same fixed training budget: "
    "without the artifact block and with it in the latent mode. The table shows, per "
    "seed, how well artifact_probability() detects the true artifacts (AUROC, AUPRC, beside the AUROC of the given "
    "labels; doublets and low-quality cells separately beside Scrublet's score), how close cells cleaned by counterfactual(do={'artifact': 0}) "
    "come to their true clean counts (energy distance, QC pass rate with thresholds from the true clean cells), "
    "the IWELBO of the counts, and how well each model recovers the true intent-to-treat shifts of clean cells "
    "(Pearson over labels x genes and least-squares slope)."
)


def summary_table(columns: dict[str, dict], caption: str) -> dict:
    """One row per quantity, one column per run (``columns``: column name -> that run's numbers)."""
    rows = []
    for label, key in ROWS:
        values = [out[key[0]][key[1]] if isinstance(key, tuple) else out[key] for out in columns.values()]
        rows.append([label, *values])
    return table(caption, ["quantity", *columns], rows, digits=3)


def run(seed: int, train_seed: int, args: argparse.Namespace) -> dict:
    """Simulate, fit both models and score them; return the numbers."""
    t0 = time.perf_counter()
    adata = pertpyro.datasets.simulate(
        n_cells=args.cells,
        n_genes=args.genes,
        n_targets=args.targets,
        n_combinations=0,
        n_truth_cells=2000,
        seed=seed,
        doublet_rate=0.1,
        low_quality_rate=0.1,
    )
    # Scrublet's doublet_score (10 principal components: the screen has 100 genes), the block's evidence with --evidence
    pertpyro.pp.qc(adata, doublets="auto", random_state=seed, scrublet_kwargs={"n_prin_comps": 10})
    evidence = "auto" if args.evidence else None
    kind = adata.obs["artifact_type"].to_numpy()
    truth = kind != "none"
    flipped = np.random.default_rng(seed).random(adata.n_obs) < args.flip
    adata.obs["artifact"] = truth ^ flipped
    pertpyro.setup_anndata(adata, perturbation_key="perturbation", control="control")
    train = {
        "max_epochs": args.epochs or None,
        "batch_size": args.batch_size,
        "early_stopping": args.early_stopping,
        "seed": train_seed,
        "progress_bar": False,
    }
    out: dict[str, float] = {"label_auroc": artifact_detection(truth, adata.obs["artifact"])["auroc"]}

    plain = pertpyro.PerturbationModel(adata, latent_dim=5, seed=train["seed"])
    out["epochs_plain"] = len(plain.train(**train))
    model = pertpyro.PerturbationModel(
        adata, latent_dim=5, artifacts="latent", artifact_evidence=evidence, seed=train["seed"]
    )
    out["epochs_block"] = len(model.train(**train))

    prob = model.artifact_probability()
    scores = artifact_detection(truth, prob)
    out |= {"artifact_auroc": scores["auroc"], "artifact_auprc": scores["auprc"], "prevalence": scores["prevalence"]}
    doublet_prob = model.artifact_probability(kind="doublet").to_numpy()
    scrublet = np.nan_to_num(adata.obs["doublet_score"].to_numpy(dtype=float), nan=0.0)
    for name in ("doublet", "low_quality"):
        keep = (kind == name) | ~truth
        named = {"": prob.to_numpy(), "scrublet_": scrublet} | ({"kind_": doublet_prob} if name == "doublet" else {})
        for label, score in named.items():
            found = artifact_detection(truth[keep], score[keep])
            out[f"{label}auroc_{name}_vs_clean"], out[f"{label}auprc_{name}_vs_clean"] = found["auroc"], found["auprc"]
    out["flip_rates_learned"] = model.program.artifact_block.flip_rates().detach().tolist()

    reference = adata[~truth]  # the true clean cells set the QC thresholds
    controls = adata[(adata.obs["perturbation"] == "control").to_numpy() & ~truth]
    for name in ("doublet", "low_quality"):
        cells = adata[kind == name]
        clean = cells.layers["clean_counts"]
        cleaned = model.counterfactual(cells, do={"artifact": 0}, n_samples=1, seed=seed).layers["counts"]
        out[f"energy_raw_{name}"] = energy_distance(cells.X, clean)
        out[f"energy_cleaned_{name}"] = energy_distance(cleaned, clean)
        out[f"qc_pass_raw_{name}"] = qc_pass_rate(cells, reference)
        out[f"qc_pass_cleaned_{name}"] = qc_pass_rate(cleaned, reference)
    for label, m, do in (("plain", plain, {"perturbation": "control"}), ("block", model, {"artifact": 0})):
        generated = m.counterfactual(controls, do=do, n_samples=1, seed=seed).layers["counts"]
        out[f"qc_pass_generated_{label}"] = qc_pass_rate(generated, reference)
    out["qc_pass_clean_cells"] = qc_pass_rate(reference, reference)

    unlabelled = adata.copy()  # IWELBO of the counts alone, log p(x): no label term, comparable across the models
    del unlabelled.obs["artifact"]
    out["iwelbo_plain"] = plain.iwelbo(unlabelled, n_samples=10)
    out["iwelbo_block"] = model.iwelbo(unlabelled, n_samples=10)

    shifts = truth_shift_frame(adata)
    out["ate_pearson_plain"], out["ate_slope_plain"] = _recovery(plain, shifts)
    out["ate_pearson_block"], out["ate_slope_block"] = _recovery(model, shifts)
    out["seconds"] = time.perf_counter() - t0

    print(
        f"simulate(n_cells={args.cells}, n_genes={args.genes}, n_targets={args.targets}, doublet_rate=0.1, "
        f"low_quality_rate=0.1, seed={seed}); {args.flip:.0%} of labels flipped; epochs {args.epochs or 'default'}, "
        f"batch {args.batch_size}, early stopping {args.early_stopping}; training seed {train_seed}"
    )
    for key, value in out.items():
        print(f"{key:32s} {value}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=2000)
    parser.add_argument("--genes", type=int, default=100)
    parser.add_argument("--targets", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=200, help="epochs (0: the package's default)")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument(
        "--early-stopping", action="store_true", help="stop on the validation ELBO (default: a fixed budget)"
    )
    parser.add_argument("--flip", type=float, default=0.2)
    parser.add_argument("--evidence", action="store_true", help="Scrublet's score as evidence of the block")
    parser.add_argument("--seed", type=int, nargs="+", default=[0], help="data seeds, one run each")
    parser.add_argument(
        "--json", type=str, default=None, help="also write each seed's numbers to this file ({seed}: the seed)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--train-seed", type=int, default=None, help="seed of both fits (default: --seed)")
    args = parser.parse_args()
    if args.json and len(args.seed) > 1 and "{seed}" not in args.json:
        parser.error("--json keeps the numbers of one seed (or name the file with {seed} for several)")
    torch.set_num_threads(args.threads)
    columns = {}
    for seed in args.seed:
        train_seed = seed if args.train_seed is None else args.train_seed
        out = run(seed, train_seed, args)
        columns[f"seed {seed}" if train_seed == seed else f"seed {seed}, training seed {train_seed}"] = out
        if args.json:
            with open(args.json.format(seed=seed), "w") as fh:
                json.dump(out, fh, indent=1)
    budget = "early stopping" if args.early_stopping else f"{args.epochs or 'default'} epochs"
    caption = (
        f"simulate(n_cells={args.cells}, n_genes={args.genes}, n_targets={args.targets}, doublet_rate=0.1, "
        f"low_quality_rate=0.1), {args.flip:.0%} of the labels flipped; both models {budget}, batch {args.batch_size}"
        + ("; Scrublet's score as evidence of the block" if args.evidence else "")
    )
    write_result(
        "artifacts_simulator",
        title="Technical artifacts on the simulator",
        summary=SUMMARY,
        tables=[summary_table(columns, caption)],
    )


if __name__ == "__main__":
    main()
