"""Doublet detection on in-silico doublets of real Papalexi cells: the model's posterior beside Scrublet's score.

For each seed: 10% of the 20,729 shipped Papalexi 2021 cells are made doublets of two real cells
(:func:`pertpyro.data.add_doublets`, partners drawn from all cells: heterotypic and homotypic as they fall);
:func:`pertpyro.pp.qc` scores every cell with Scrublet (``scanpy.pp.scrublet``, per replicate, on all cells: its
neighbour graph as good as the data allow); its labels are dropped, so no label is given. On a random subset of
``--cells`` cells (all by default), the latent artifact model is fitted with Scrublet's score as evidence
(``artifact_evidence="auto"``) and without it (``None``), same data and training. Reported: doublet AUROC / AUPRC of
Scrublet's score (on the subset, and on all cells), of the log library size alone (a doublet holds two cells' molecules), of
``artifact_probability(kind="doublet")`` and of ``artifact_probability()`` (either kind), with the paired
difference model - Scrublet per seed and its mean with a t interval over seeds.

Run: ``python benchmarks/artifacts_doublets_papalexi.py --seed 0 1 2`` (``--help`` for sizes). Writes
``benchmarks/results/artifacts_doublets_papalexi.json``. Seeds in parallel processes: ``--seed S --raw
raw_S.json`` each, then ``--from-raw raw_*.json`` writes the result from their numbers.
"""

import argparse
import json
import time

import numpy as np
import scipy.stats
import torch
from _results import command_line, table, write_result

import pertpyro
from pertpyro import pp
from pertpyro.data import add_doublets, papalexi2021
from pertpyro.evaluation import artifact_detection

SUMMARY = (
    "10% of the Papalexi 2021 cells are made in-silico doublets (the counts of two real cells summed) and scored "
    "by Scrublet (scanpy.pp.scrublet through pertpyro.pp.qc, per replicate, on all cells); on a random subset of "
    "the cells, by the latent artifact model fitted without labels, with Scrublet's score as evidence and without it. The "
    "tables show doublet AUROC and AUPRC per seed and the paired differences model - Scrublet (mean and 95% t "
    "interval over the seeds). The log library size alone is shown too: summed doublets hold about twice a cell's "
    "molecules, which Scrublet's normalised profiles do not see and the model's depth law does."
)
SCORES = (
    ("Scrublet doublet_score", "scrublet"),
    ("Scrublet doublet_score, all 20,729 cells", "scrublet_all_cells"),
    ("log library size alone", "library"),
    ("model, Scrublet's score as evidence: P(doublet)", "evidence_doublet"),
    ("model, Scrublet's score as evidence: P(artifact)", "evidence_any"),
    ("model without evidence: P(doublet)", "plain_doublet"),
    ("model without evidence: P(artifact)", "plain_any"),
)


def run(seed: int, args: argparse.Namespace) -> dict[str, float]:
    """One seed: subset, doublets, Scrublet, two fits; the detection scores."""
    t0 = time.perf_counter()
    adata = add_doublets(papalexi2021(), args.rate, seed=seed)  # doublets and Scrublet on all 20,729 cells
    pp.qc(adata, batch_key="bio_rep", doublets="auto", expected_doublet_rate=args.rate, random_state=seed)
    del adata.obs["artifact"]  # no labels given
    scrublet_all = artifact_detection(
        (adata.obs["artifact_type"] == "doublet").to_numpy(),
        np.nan_to_num(adata.obs["doublet_score"].to_numpy(dtype=float), nan=0.0),
    )
    rng = np.random.default_rng(seed)
    if args.cells < adata.n_obs:  # the model is fitted on a random subset of the cells, scored there
        adata = adata[np.sort(rng.choice(adata.n_obs, args.cells, replace=False))].copy()
    truth = (adata.obs["artifact_type"] == "doublet").to_numpy()
    pertpyro.setup_anndata(adata, perturbation_key="perturbation", control="control", batch_key="bio_rep")
    scores = {
        "scrublet": np.nan_to_num(adata.obs["doublet_score"].to_numpy(dtype=float), nan=0.0),
        "library": np.log(np.asarray(adata.X.sum(1)).ravel()),
    }
    train = {"max_epochs": args.epochs, "batch_size": 512, "early_stopping": False, "seed": seed, "progress_bar": False}
    fits = (("evidence", "auto"),) if args.no_plain else (("evidence", "auto"), ("plain", None))
    for name, evidence in fits:
        model = pertpyro.PerturbationModel(adata, artifacts="latent", artifact_evidence=evidence, seed=seed)
        model.train(**train)
        for kind in ("doublet", "any"):
            scores[f"{name}_{kind}"] = model.artifact_probability(n_samples=args.samples, kind=kind).to_numpy()
    out = {}
    for key, score in scores.items():
        result = artifact_detection(truth, score)
        out[f"{key}_auroc"], out[f"{key}_auprc"] = result["auroc"], result["auprc"]
    out["scrublet_all_cells_auroc"], out["scrublet_all_cells_auprc"] = scrublet_all["auroc"], scrublet_all["auprc"]
    out["homotypic_share"] = float((adata.obs["doublet_type"] == "homotypic").sum() / truth.sum())
    out["seconds"] = time.perf_counter() - t0
    print(f"seed {seed}: " + ", ".join(f"{k} {v:.4f}" for k, v in out.items()), flush=True)
    return out


def _interval(diffs: np.ndarray) -> list[float]:
    mean = float(diffs.mean())
    if len(diffs) < 2:
        return [mean, float("nan"), float("nan")]
    half = float(scipy.stats.t.ppf(0.975, len(diffs) - 1) * diffs.std(ddof=1) / np.sqrt(len(diffs)))
    return [mean, mean - half, mean + half]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=20729, help="cells the model is fitted on (of 20,729) per seed")
    parser.add_argument("--rate", type=float, default=0.1, help="doublet rate")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--samples", type=int, default=10, help="importance samples of artifact_probability")
    parser.add_argument("--seed", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--no-plain", action="store_true", help="skip the fit without evidence")
    parser.add_argument("--raw", type=str, default=None, help="write the seeds' numbers here instead of the result")
    parser.add_argument("--from-raw", type=str, nargs="+", default=None, help="write the result from --raw files")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    command = None
    if args.from_raw:
        loaded = [json.load(open(path)) for path in args.from_raw]
        command = " && ".join([raw["command"] for raw in loaded] + [command_line()])
        runs = {int(seed): out for raw in loaded for seed, out in raw["runs"].items()}
        for key in ("cells", "rate", "epochs"):
            setattr(args, key, loaded[0]["args"][key])
    else:
        runs = {seed: run(seed, args) for seed in args.seed}
    if args.raw:
        with open(args.raw, "w") as fh:
            json.dump({"args": vars(args), "runs": runs, "command": command_line()}, fh, indent=1)
        return
    columns = [f"seed {s}" for s in runs]
    rows = []
    for metric in ("auroc", "auprc"):
        for label, key in SCORES:
            values = [out.get(f"{key}_{metric}", float("nan")) for out in runs.values()]
            if not np.all(np.isnan(values)):  # (the fit without evidence is skipped with --no-plain)
                rows.append([f"{metric.upper()}, {label}", *values])
    detection = table(
        f"Doublet detection, {args.cells} cells per seed, {args.rate:.0%} in-silico doublets, no labels; model: "
        f"latent artifact block, {args.epochs} epochs of batch 512",
        ["score", *columns],
        rows,
        digits=3,
    )
    diff_rows = []
    for metric in ("auroc", "auprc"):
        for label, key in SCORES[2:]:
            diffs = np.array(
                [out.get(f"{key}_{metric}", float("nan")) - out[f"scrublet_{metric}"] for out in runs.values()]
            )
            if not np.all(np.isnan(diffs)):
                diff_rows.append([f"{metric.upper()}, {label} - Scrublet", *diffs.tolist(), *_interval(diffs)])
        for label, key in SCORES[3:]:  # the model against depth alone
            diffs = np.array(
                [out.get(f"{key}_{metric}", float("nan")) - out[f"library_{metric}"] for out in runs.values()]
            )
            if not np.all(np.isnan(diffs)):
                diff_rows.append([f"{metric.upper()}, {label} - log library size", *diffs.tolist(), *_interval(diffs)])
    paired = table(
        "Paired differences from Scrublet's score and from the log library size (same cells and doublets per seed), "
        "mean and 95% t interval",
        ["difference", *columns, "mean", "low", "high"],
        diff_rows,
        digits=3,
    )
    write_result(
        "artifacts_doublets_papalexi",
        title="Doublets of real Papalexi cells: the artifact model beside Scrublet",
        summary=SUMMARY,
        tables=[detection, paired],
        command=command,
    )


if __name__ == "__main__":
    main()
