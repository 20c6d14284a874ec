"""Command line: ``pertpyro fit CONFIG``, ``pertpyro evaluate RUN_DIR``, ``pertpyro query RUN_DIR --do ...``."""

from __future__ import annotations

import argparse
import copy
import inspect
import logging
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from anndata import AnnData

logger = logging.getLogger("pertpyro.cli")

DEFAULTS: dict[str, Any] = {
    "name": "run",
    "output": None,
    "data": {
        "dataset": "papalexi2021",
        "path": None,
        "simulate": {},
        "perturbation_key": "perturbation",
        "control": "control",
        "batch_key": None,
        "layer": None,
    },
    "qc": {"run": False, "n_mads": [5.0, 5.0, 3.0, 3.0], "doublets": "auto"},  # pertpyro.pp.qc before fitting
    "split": {"kind": "random", "seed": 0, "heldout": None},
    "model": None,  # PerturbationModel's keyword arguments (filled from its signature)
    "train": None,  # PerturbationModel.train's keyword arguments (filled from its signature)
    # n_counts: count replicates per cell and draw of the ATE engine
    "evaluate": {"n_samples": 30, "top_k": 20, "iwelbo_particles": 10, "n_counts": 1},
    "calibrate": {
        "run": False,
        "n_replicas": 2,
        "n_samples": 100,
    },  # model.calibrate() after training (one more training)
}
CONFIG_FILE = "config.yaml"
SPLIT_FILE = "split.csv"


def _keyword_defaults(fn: Any, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    params = inspect.signature(fn).parameters.values()
    return {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY and p.name not in skip}


def _defaults() -> dict[str, Any]:
    from pertpyro.model import PerturbationModel

    out = copy.deepcopy(DEFAULTS)
    out["model"] = _keyword_defaults(PerturbationModel.__init__)
    out["train"] = _keyword_defaults(PerturbationModel.train, skip=("validation_adata", "log_dir"))
    return out


def _merge(base: dict, override: dict, path: str = "") -> dict:
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if key not in base:
            raise ValueError(f"Unknown config key '{path}{key}'; known keys: {sorted(base)}.")
        if isinstance(base[key], dict) and base[key] and isinstance(value, dict):
            out[key] = _merge(base[key], value, f"{path}{key}.")
        else:
            out[key] = value
    return out


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML config and fill every missing option with its default.

    Raises
    ------
    ValueError
        For keys the config schema does not know (typos must not pass silently).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No config file at {path}.")
    raw = yaml.safe_load(path.read_text()) or {}
    config = _merge(_defaults(), raw)
    if config["output"] is None:
        config["output"] = str(Path("runs") / config["name"])
    return config


def load_data(config: dict[str, Any]) -> AnnData:
    """The AnnData a config names, registered with :func:`pertpyro.setup_anndata`."""
    import anndata

    import pertpyro

    data = config["data"]
    if data["path"]:
        adata = anndata.read_h5ad(data["path"])
    elif data["dataset"] == "papalexi2021":
        adata = pertpyro.datasets.papalexi2021()
    elif data["dataset"] == "simulate":
        adata = pertpyro.datasets.simulate(**data["simulate"])
    else:
        raise ValueError(f"Unknown dataset {data['dataset']!r}: use papalexi2021, simulate, or data.path.")
    qc = config["qc"]
    if qc["run"]:  # artifact labels for the model's artifact block (obs["artifact"]; cells are never dropped)
        pertpyro.pp.qc(adata, batch_key=data["batch_key"], n_mads=qc["n_mads"], doublets=qc["doublets"])
    pertpyro.setup_anndata(
        adata,
        perturbation_key=data["perturbation_key"],
        control=data["control"],
        batch_key=data["batch_key"],
        layer=data["layer"],
    )
    return adata


def make_split(adata: AnnData, config: dict[str, Any]) -> pd.Series:
    """Train/val/test label per cell for the config's split."""
    from pertpyro import evaluation

    split = config["split"]
    if split["kind"] == "random":
        return evaluation.split_cells(adata, seed=split["seed"])
    if split["kind"] == "heldout_combinations":
        return evaluation.split_heldout_combinations(adata, heldout=split["heldout"] or 1, seed=split["seed"])
    if split["kind"] == "heldout_perturbations":
        return evaluation.split_heldout_perturbations(adata, split["heldout"], seed=split["seed"])
    raise ValueError(f"Unknown split kind {split['kind']!r}: random, heldout_combinations, heldout_perturbations.")


def _subsets(adata: AnnData, split: pd.Series) -> dict[str, AnnData]:
    labels = split.reindex(adata.obs_names).to_numpy()
    return {name: adata[labels == name].copy() for name in ("train", "val", "test")}


def fit(config_path: str | Path, *, output: str | None = None, max_epochs: int | None = None) -> Path:
    """Train the model a config describes and save it, with the config and the split, to the run folder."""
    from pertpyro import PerturbationModel

    config = load_config(config_path)
    if output is not None:
        config["output"] = output
    if max_epochs is not None:
        config["train"]["max_epochs"] = max_epochs
    run_dir = Path(config["output"])
    adata = load_data(config)
    split = make_split(adata, config)
    parts = _subsets(adata, split)
    logger.info("%s: %d train / %d val / %d test cells", config["name"], *(parts[k].n_obs for k in parts))
    model = PerturbationModel(parts["train"], **config["model"])
    start = time.perf_counter()
    model.train(validation_adata=parts["val"], log_dir=run_dir / "logs", **config["train"])
    elapsed = time.perf_counter() - start
    if config["calibrate"]["run"]:  # intervals calibrated on a replica screen simulated from the fit
        coverage = model.calibrate(
            n_replicas=config["calibrate"]["n_replicas"], n_samples=config["calibrate"]["n_samples"]
        )
        cal = model.interval_calibration_
        print(f"Calibrated the intervals on a replica screen: scale {cal.scale:.2f}, relative {cal.relative:.2f}")
        print(coverage.to_string(index=False, float_format="{:.3f}".format))
    model.save(run_dir, overwrite=True)
    (run_dir / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False))
    split.rename("split").to_csv(run_dir / SPLIT_FILE)
    epochs = len(model.history_)
    print(f"Trained {epochs} epochs in {elapsed:.0f} s; saved to {run_dir}")
    return run_dir


def evaluate(run_dir: str | Path) -> pd.DataFrame:
    """Held-out metrics of a saved run beside the baselines; writes ``metrics.csv`` and ``metrics.md``."""
    from pertpyro import PerturbationModel, evaluation
    from pertpyro.data._registry import perturbation_labels
    from pertpyro.evaluation._draws import heldout_draws

    run_dir = Path(run_dir)
    config = load_config(run_dir / CONFIG_FILE)
    adata = load_data(config)
    split = pd.read_csv(run_dir / SPLIT_FILE, index_col=0)["split"]
    parts = _subsets(adata, split)
    model = PerturbationModel.load(run_dir, parts["train"])
    ev = config["evaluate"]
    # One simulation serves both the predictions (batch-matched posterior means) and the scored intervals
    # (batch-standardised draws): the same draws model.predict_shift and calibration_report would take.
    test_labels = sorted(
        {str(lab) for lab in perturbation_labels(parts["test"], model.registry)} - {model.registry.control}
    )
    report_labels = evaluation.report_labels(model, adata)
    labels = list(dict.fromkeys(test_labels + report_labels))
    matched, standard = heldout_draws(model, labels, n_samples=ev["n_samples"], n_counts=ev["n_counts"])
    predicted = pd.DataFrame(matched.mean(0).numpy(), index=labels, columns=list(model.registry.genes))
    table = evaluation.ate_metrics(
        model,
        parts["test"],
        adata_train=parts["train"],
        top_k=ev["top_k"],
        reference=("control", "perturbed"),
        predictions=predicted.loc[test_labels],
        iwelbo=False,
    )
    table.insert(len(table.columns), "iwelbo", float("nan"))
    iwelbo = model.iwelbo(parts["test"], n_samples=ev["iwelbo_particles"])
    table.loc[table["method"] == table["method"].iloc[0], "iwelbo"] = iwelbo
    table.to_csv(run_dir / "metrics.csv", index=False)
    text = evaluation.format_table(table)
    rows = [labels.index(label) for label in report_labels]
    coverage = evaluation.calibration_report(model, adata, parts["test"], draws=standard[:, rows].numpy())
    coverage.to_csv(run_dir / "calibration.csv", index=False)
    text += (
        "\n\nCoverage of the ATE credible intervals, raw and (after model.calibrate) calibrated "
        "(truth: simulator; heldout: observed test shifts +- their SE)\n"
    )
    text += coverage.to_string(index=False, float_format="{:.3f}".format)
    (run_dir / "metrics.md").write_text(text + "\n")
    print(text)
    return table


def query(run_dir: str | Path, do: list[str], *, out: str | None = None, n_samples: int = 100) -> pd.DataFrame:
    """ATE of ``do perturbation=LABEL`` interventions against control for a saved run."""
    from pertpyro import PerturbationModel

    run_dir = Path(run_dir)
    config = load_config(run_dir / CONFIG_FILE)
    adata = load_data(config)
    split = pd.read_csv(run_dir / SPLIT_FILE, index_col=0)["split"]
    model = PerturbationModel.load(run_dir, _subsets(adata, split)["train"])
    labels = []
    for item in do:
        site, _, value = item.partition("=")
        if site != "perturbation" or not value:
            raise ValueError(f"--do expects perturbation=LABEL, got {item!r}.")
        labels.append(value)
    table = model.ate(labels, n_samples=n_samples)
    if out:
        table.to_csv(out, index=False)
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
    p_eval = sub.add_parser("evaluate", help="held-out metrics of a run beside the baselines")
    p_eval.add_argument("run_dir")
    p_query = sub.add_parser("query", help="effects of interventions for a run")
    p_query.add_argument("run_dir")
    p_query.add_argument("--do", action="append", required=True, help="perturbation=LABEL (repeatable)")
    p_query.add_argument("--out", default=None, help="CSV file for the table (default: print)")
    p_query.add_argument("--n-samples", type=int, default=100)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    from pertpyro.inference._memory import keep_freed_memory

    keep_freed_memory()  # training and the queries allocate the same large tensors over and over
    try:
        if args.command == "fit":
            fit(args.config, output=args.output, max_epochs=args.max_epochs)
        elif args.command == "evaluate":
            evaluate(args.run_dir)
        else:
            query(args.run_dir, args.do, out=args.out, n_samples=args.n_samples)
    except (ValueError, FileNotFoundError) as err:
        print(f"pertpyro: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
