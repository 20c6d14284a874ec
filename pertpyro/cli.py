"""Command line: ``pertpyro fit CONFIG``, ``pertpyro evaluate RUN_DIR``, ``pertpyro query RUN_DIR --do ...``.

``pertpyro shuffle SRC DST`` converts an h5ad file for fast training from disk (:func:`pertpyro.data.shuffle_h5ad`).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import pandas as pd
from anndata import AnnData

from pertpyro import evaluation, plotting, runs
from pertpyro._config import read_config, validate_config
from pertpyro._io import atomic_write_text
from pertpyro.data._controls import negative_control_labels, restore_controls
from pertpyro.data._registry import perturbation_labels
from pertpyro.data._shuffle import shuffle_h5ad
from pertpyro.evaluation._draws import heldout_draws
from pertpyro.inference._memory import keep_freed_memory
from pertpyro.model import PerturbationModel
from pertpyro.runs import CONFIG_FILE, SPLIT_FILE, load_data, load_run, subsets  # noqa: F401 (public here too)

logger = logging.getLogger("pertpyro.cli")


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML config, check it against the schema (:mod:`pertpyro._config`) and fill every default.

    Raises
    ------
    ValueError
        (:class:`pertpyro._config.ConfigError`) for YAML errors, unknown keys, wrong types and out-of-range values.
    """
    return read_config(path)


def make_split(adata: AnnData, config: dict[str, Any]) -> pd.Series:
    """Train/val/test label per cell for the config's split."""
    split = config["split"]
    if split["kind"] == "random":
        return evaluation.split_cells(adata, seed=split["seed"])
    if split["kind"] == "heldout_combinations":
        return evaluation.split_heldout_combinations(adata, heldout=split["heldout"] or 1, seed=split["seed"])
    if split["kind"] == "heldout_perturbations":
        return evaluation.split_heldout_perturbations(adata, split["heldout"], seed=split["seed"])
    raise ValueError(f"Unknown split kind {split['kind']!r}: random, heldout_combinations, heldout_perturbations.")


def _subsets(adata: AnnData, split: pd.Series) -> dict[str, AnnData]:
    return subsets(adata, split)


def _check_same_config(run_dir: Path, config: dict[str, Any]) -> None:
    """A resumed fit must use the settings of the run it continues (the run's own epochs limit may change)."""
    if not (run_dir / CONFIG_FILE).exists():
        return
    stored = load_config(run_dir / CONFIG_FILE)
    for section in ("data", "qc", "split", "model", "train"):
        ignore = {"max_epochs", "progress_bar"} if section == "train" else set()
        now = {k: v for k, v in config[section].items() if k not in ignore}
        then = {k: v for k, v in stored[section].items() if k not in ignore}
        if now != then:
            changed = sorted(k for k in set(now) | set(then) if now.get(k) != then.get(k))
            raise runs.RunError(
                f"--resume: the config's {section} settings {changed} differ from the run's in {run_dir}; "
                "resume with the run's config or start over with --overwrite."
            )


def fit(
    config_path: str | Path,
    *,
    output: str | None = None,
    max_epochs: int | None = None,
    overwrite: bool = False,
    resume: bool = False,
) -> Path:
    """Train the model a config describes and save it, with the config and the split, to the run folder.

    The folder gets ``config.yaml``, ``split.csv`` and ``data.json`` before training and a checkpoint every epoch
    (``checkpoints/last.ckpt``, ``checkpoints/best.ckpt``), so a killed fit continues with ``resume=True``.
    A folder that holds a run is refused unless ``overwrite`` (which removes the old run's files) or ``resume``.
    """
    config = load_config(config_path)
    if output is not None:
        config["output"] = output
    if max_epochs is not None:
        config["train"]["max_epochs"] = validate_config({"train": {"max_epochs": max_epochs}})["train"]["max_epochs"]
    run_dir = Path(config["output"])
    ckpt_path = runs.prepare_run_dir(run_dir, overwrite=overwrite, resume=resume)
    adata = load_data(config, negative_controls=False)  # the split is drawn on the screen as shipped
    if ckpt_path is not None:  # the same settings, data and split as the killed fit
        _check_same_config(run_dir, config)
        runs.check_data(run_dir, adata)
        split = runs.read_split(run_dir)
    else:
        split = make_split(adata, config)
        runs.record_data(run_dir, adata)
        runs.write_split(run_dir, split)
    runs.add_config_controls(adata, config)
    runs.write_config(run_dir, config)
    parts = subsets(adata, split)
    logger.info("%s: %d train / %d val / %d test cells", config["name"], *(parts[k].n_obs for k in parts))
    model = PerturbationModel(parts["train"], **config["model"])
    start = time.perf_counter()
    try:
        model.train(
            validation_adata=parts["val"],
            log_dir=run_dir / runs.LOG_DIR,
            checkpoint_dir=run_dir / runs.CHECKPOINT_DIR,
            ckpt_path=ckpt_path,
            **config["train"],
        )
    except KeyboardInterrupt:
        if model.is_trained:
            model.save(run_dir, overwrite=True)
            print(
                f"Interrupted after {len(model.history_)} epochs; saved the model trained so far to {run_dir} "
                f"(continue with: pertpyro fit {config_path} --resume)",
                file=sys.stderr,
            )
        else:
            print(f"Interrupted before the first epoch ended; nothing saved in {run_dir}.", file=sys.stderr)
        raise
    elapsed = time.perf_counter() - start
    if config["calibrate"]["run"]:  # intervals calibrated on a replica screen simulated from the fit
        coverage = model.calibrate(
            n_replicas=config["calibrate"]["n_replicas"], n_samples=config["calibrate"]["n_samples"]
        )
        cal = model.interval_calibration_
        print(f"Calibrated the intervals on a replica screen: scale {cal.scale:.2f}, relative {cal.relative:.2f}")
        print(coverage.to_string(index=False, float_format="{:.3f}".format))
    model.save(run_dir, overwrite=True)
    epochs = len(model.history_)
    print(f"Trained {epochs} epochs in {elapsed:.0f} s; saved to {run_dir}")
    return run_dir


def evaluate(run_dir: str | Path, *, cell_eval: bool | None = None) -> pd.DataFrame:
    """Held-out metrics of a saved run beside the baselines; writes ``metrics.csv`` and ``metrics.md``.

    With ``cell_eval`` (default: the config's ``evaluate.cell_eval``), cell-eval's full profile on generated cells
    of the model and the baselines joins the report; its files go to ``cell_eval/`` in the run folder.
    """
    run = load_run(run_dir)
    run_dir, config, adata, model, parts = run.run_dir, run.config, run.adata, run.model, run.subsets()
    ev = config["evaluate"]
    # The predictions are model.predict_shift's (each label from its own training cells' basal states); the scored
    # intervals are the ATE's batch-standardised draws, the ones calibration_report would take.
    nulls = set(negative_control_labels(model.adata))  # null pseudo-targets: scored as controls, not as knockouts
    test_labels = sorted(
        {str(lab) for lab in perturbation_labels(parts["test"], model.registry)} - {model.registry.control} - nulls
    )
    report_labels = [label for label in evaluation.report_labels(model, adata) if label not in nulls]
    control_labels = list(model.registry.targets)
    labels = list(dict.fromkeys(test_labels + report_labels + control_labels))
    _, standard = heldout_draws(model, labels, n_samples=ev["n_samples"], n_counts=ev["n_counts"])
    predicted = model.predict_shift(test_labels, n_samples=ev["n_samples"])
    test = restore_controls(parts["test"])  # scored as shipped: the nulls' cells are control cells again
    table = evaluation.ate_metrics(
        model,
        test,
        adata_train=restore_controls(parts["train"]),
        top_k=ev["top_k"],
        reference=("control", "perturbed"),
        predictions=predicted.loc[test_labels],
        iwelbo=False,
    )
    table.insert(len(table.columns), "iwelbo", float("nan"))
    iwelbo = model.iwelbo(parts["test"], n_samples=ev["iwelbo_particles"])
    table.loc[table["method"] == table["method"].iloc[0], "iwelbo"] = iwelbo
    atomic_write_text(run_dir / "metrics.csv", table.to_csv(index=False))
    text = evaluation.format_table(table)
    rows = [labels.index(label) for label in report_labels]
    coverage = evaluation.calibration_report(model, adata, test, draws=standard[:, rows].numpy())
    atomic_write_text(run_dir / "calibration.csv", coverage.to_csv(index=False))
    text += (
        "\n\nCoverage of the ATE credible intervals, raw and (after model.calibrate) calibrated "
        "(truth: simulator; heldout: observed test shifts +- their SE)\n"
    )
    text += coverage.to_string(index=False, float_format="{:.3f}".format)
    if ev["cell_eval"] if cell_eval is None else cell_eval:
        text += "\n\n" + evaluation.cell_eval_report(model, parts["train"], parts["test"], run_dir / "cell_eval")[1]
    if ev["n_splits"] > 1:
        text += "\n\n" + _repeated(run, table)
    controls, pvalues = evaluation.controls_report(
        model,
        standard[:, [labels.index(label) for label in control_labels]].numpy(),
        control_labels,
        threshold=ev["threshold"],
        fdr=ev["fdr"],
    )
    if not controls.empty:
        atomic_write_text(run_dir / "controls.csv", controls.to_csv(index=False))
        text += (
            f"\n\nControls: null pseudo-targets (share of genes whose interval excludes 0; hits at FDR {ev['fdr']}) "
            "and targets that are genes (their own knockdown, 90% interval)\n"
        )
        text += controls.to_string(index=False, float_format="{:.3f}".format)
        if pvalues:
            plotting.null_qq(pvalues, save=run_dir / "controls_qq.png")
    atomic_write_text(run_dir / "metrics.md", text + "\n")
    print(text)
    return table


def _repeated(run: runs.Run, table: pd.DataFrame) -> str:
    """Refit on ``evaluate.n_splits - 1`` more splits; write ``splits.csv`` and ``paired.csv``; their report."""
    config, parts, start = run.config, run.subsets(), time.perf_counter()
    per_split, paired = evaluation.repeated_evaluation(
        run.adata,
        lambda seed: make_split(run.adata, {**config, "split": {**config["split"], "seed": seed}}),
        seed=config["split"]["seed"],
        n_splits=config["evaluate"]["n_splits"],
        model_kwargs=config["model"],
        train_kwargs=config["train"],
        first=table,
        n_samples=config["evaluate"]["n_samples"],
        test_train_ratio=parts["test"].n_obs / parts["train"].n_obs,
        top_k=config["evaluate"]["top_k"],
        reference=("control", "perturbed"),
    )
    atomic_write_text(run.run_dir / "splits.csv", per_split.to_csv(index=False))
    atomic_write_text(run.run_dir / "paired.csv", paired.to_csv(index=False))
    return evaluation.format_paired(paired, seconds=time.perf_counter() - start)


def query(run_dir: str | Path, do: list[str], *, out: str | None = None, n_samples: int = 100) -> pd.DataFrame:
    """ATE of ``do perturbation=LABEL`` interventions against control for a saved run."""
    if out is not None and not Path(out).absolute().parent.is_dir():
        raise FileNotFoundError(f"--out {out}: the folder {Path(out).absolute().parent} does not exist.")
    if n_samples < 1:
        raise ValueError(f"--n-samples must be a positive integer, got {n_samples}.")
    labels = []
    for item in do:
        site, _, value = item.partition("=")
        if site != "perturbation" or not value:
            raise ValueError(f"--do expects perturbation=LABEL, got {item!r}.")
        labels.append(value)
    model = load_run(run_dir).model
    table = model.ate(labels, n_samples=n_samples)
    if out:
        atomic_write_text(out, table.to_csv(index=False))
    else:
        print(table.to_string(index=False))
    return table


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pertpyro`` command."""
    parser = argparse.ArgumentParser(prog="pertpyro", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)
    p_fit = sub.add_parser("fit", help="train a model from a YAML config")
    p_fit.add_argument("config")
    p_fit.add_argument("--output", default=None, help="run folder (default: the config's output)")
    p_fit.add_argument("--max-epochs", type=int, default=None)
    p_fit.add_argument("--overwrite", action="store_true", help="replace the run in the output folder")
    p_fit.add_argument("--resume", action="store_true", help="continue a stopped fit from its last checkpoint")
    p_eval = sub.add_parser("evaluate", help="held-out metrics of a run beside the baselines")
    p_eval.add_argument("run_dir")
    p_eval.add_argument(
        "--cell-eval",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also score generated cells with cell-eval's full profile (default: the config's evaluate.cell_eval)",
    )
    p_query = sub.add_parser("query", help="effects of interventions for a run")
    p_query.add_argument("run_dir")
    p_query.add_argument("--do", action="append", required=True, help="perturbation=LABEL (repeatable)")
    p_query.add_argument("--out", default=None, help="CSV file for the table (default: print)")
    p_query.add_argument("--n-samples", type=int, default=100)
    p_shuffle = sub.add_parser(
        "shuffle", help="copy an h5ad file with its cells in random order, for fast training from disk"
    )
    p_shuffle.add_argument("src")
    p_shuffle.add_argument("dst")
    p_shuffle.add_argument("--seed", type=int, default=0)
    p_shuffle.add_argument("--overwrite", action="store_true", help="replace dst")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    keep_freed_memory()  # training and the queries allocate the same large tensors over and over
    try:
        if args.command == "fit":
            fit(
                args.config,
                output=args.output,
                max_epochs=args.max_epochs,
                overwrite=args.overwrite,
                resume=args.resume,
            )
        elif args.command == "shuffle":
            shuffle_h5ad(args.src, args.dst, seed=args.seed, overwrite=args.overwrite)
        elif args.command == "evaluate":
            evaluate(args.run_dir, cell_eval=args.cell_eval)
        else:
            query(args.run_dir, args.do, out=args.out, n_samples=args.n_samples)
    except KeyboardInterrupt:
        if args.verbose:
            raise
        return 130  # the conventional status of a command stopped by Ctrl-C (fit said what it saved)
    except (ValueError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError) as err:
        if args.verbose:
            traceback.print_exc(file=sys.stderr)
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"pertpyro: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
