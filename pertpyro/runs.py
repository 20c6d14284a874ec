"""Run folders of ``pertpyro fit``: what they hold, how to open one, and the checks that keep them honest.

A run folder holds ``config.yaml`` (the validated config, defaults filled), ``split.csv`` (train/val/test per
cell), ``data.json`` (the data's shape and fingerprint), ``checkpoints/`` (``last.ckpt``, ``best.ckpt``), ``logs/``
and, once training ends, the model (``model.pt``, ``settings.json``); ``evaluate`` adds ``metrics.csv``,
``metrics.md``, ``calibration.csv``, ``splits.csv`` and ``paired.csv`` (repeated splits) and, with negative or
positive controls, ``controls.csv`` and ``controls_qq.png``; with cell-eval, ``cell_eval/``.

:func:`load_run` opens one: the data the config names, checked against the fingerprint, and the model.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anndata
import pandas as pd
import yaml
from anndata import AnnData

from pertpyro._config import read_config
from pertpyro._io import SETTINGS_FILE, TENSORS_FILE, atomic_write_text
from pertpyro.data._controls import add_negative_controls
from pertpyro.data._datasets import papalexi2021
from pertpyro.data._qc import qc
from pertpyro.data._setup import setup_anndata
from pertpyro.data._simulate import simulate
from pertpyro.model import PerturbationModel

CONFIG_FILE = "config.yaml"
SPLIT_FILE = "split.csv"
DATA_FILE = "data.json"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
LOG_DIR = "logs"
# Everything a run writes: an overwrite removes these (and nothing else the folder may hold).
RUN_FILES = (
    CONFIG_FILE,
    SPLIT_FILE,
    DATA_FILE,
    TENSORS_FILE,
    SETTINGS_FILE,
    "registry.json",
    "metrics.csv",
    "metrics.md",
    "calibration.csv",
    "splits.csv",
    "paired.csv",
    "controls.csv",
    "controls_qq.png",
)
RUN_FOLDERS = (CHECKPOINT_DIR, LOG_DIR)


def add_config_controls(adata: AnnData, config: dict[str, Any]) -> list[str]:
    """Form the config's null pseudo-targets (``data.negative_controls``) and register ``adata`` again.

    The cells of non-targeting guides become null pseudo-targets (:func:`pertpyro.data.add_negative_controls`; random
    groups of control cells without ``data.guide_key``); none by default. Returns their labels.
    """
    data = config["data"]
    n_controls = data.get("negative_controls") or 0
    if n_controls == 0:
        return []
    keys = {"perturbation_key": data["perturbation_key"], "control": data["control"]}
    nulls = add_negative_controls(adata, n_controls, guide_key=data["guide_key"], **keys)
    setup_anndata(adata, **keys, batch_key=data["batch_key"], layer=data["layer"], guide_key=data["guide_key"])
    return nulls


def load_data(config: dict[str, Any], *, negative_controls: bool = True) -> AnnData:
    """The AnnData a config names, registered with :func:`pertpyro.setup_anndata`.

    With ``negative_controls``, the config's null pseudo-targets are formed (:func:`add_config_controls`);
    ``pertpyro fit`` draws the split before forming them, so the split is that of the screen as shipped.
    """
    data = config["data"]
    if data["path"]:
        adata = anndata.read_h5ad(data["path"])
    elif data["dataset"] == "papalexi2021":
        adata = papalexi2021()
    elif data["dataset"] == "simulate":
        adata = simulate(**data["simulate"])
    else:
        raise ValueError(f"Unknown dataset {data['dataset']!r}: use papalexi2021, simulate, or data.path.")
    qc_options = config["qc"]
    if qc_options["run"]:  # artifact labels for the model's artifact block (obs["artifact"]; cells are never dropped)
        qc(adata, batch_key=data["batch_key"], n_mads=qc_options["n_mads"], doublets=qc_options["doublets"])
    setup_anndata(
        adata,
        perturbation_key=data["perturbation_key"],
        control=data["control"],
        batch_key=data["batch_key"],
        layer=data["layer"],
        guide_key=data["guide_key"],
    )
    if negative_controls:
        add_config_controls(adata, config)
    return adata


class RunError(ValueError):
    """A run folder that is missing, holds another run, or whose data changed (the message is one line)."""


def fingerprint(adata: AnnData) -> dict[str, Any]:
    """The data's shape and a SHA-256 of its cell names and gene names (order included)."""
    digest = hashlib.sha256()
    for names in (adata.obs_names, adata.var_names):
        for name in names:
            digest.update(str(name).encode())
            digest.update(b"\n")
        digest.update(b"\0")
    return {"n_obs": int(adata.n_obs), "n_vars": int(adata.n_vars), "sha256": digest.hexdigest()}


def record_data(run_dir: str | Path, adata: AnnData) -> None:
    """Write ``data.json``: what :func:`check_data` compares later."""
    atomic_write_text(Path(run_dir) / DATA_FILE, json.dumps(fingerprint(adata), indent=1))


def check_data(run_dir: str | Path, adata: AnnData) -> None:
    """Raise :class:`RunError` unless ``adata`` is the data the run was fitted on (runs without a record pass)."""
    path = Path(run_dir) / DATA_FILE
    if not path.exists():
        return
    try:
        recorded = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RunError(f"{path} is damaged; fit the run again.") from err
    now = fingerprint(adata)
    if recorded != now:
        raise RunError(
            f"The data of run {run_dir} changed since it was fitted: recorded {recorded['n_obs']} cells x "
            f"{recorded['n_vars']} genes ({recorded['sha256'][:12]}), now {now['n_obs']} x {now['n_vars']} "
            f"({now['sha256'][:12]}); fit it again or restore the data."
        )


def holds_run(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds (part of) a run."""
    run_dir = Path(run_dir)
    return any((run_dir / name).exists() for name in (*RUN_FILES, *RUN_FOLDERS))


def clear_run(run_dir: str | Path) -> None:
    """Remove a run's files from ``run_dir`` (files it did not write stay)."""
    run_dir = Path(run_dir)
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    for name in RUN_FOLDERS:
        if (run_dir / name).is_dir():
            shutil.rmtree(run_dir / name)


def prepare_run_dir(run_dir: str | Path, *, overwrite: bool = False, resume: bool = False) -> Path | None:
    """Get ``run_dir`` ready for ``fit``; the checkpoint to resume from (``resume``) or ``None``.

    Raises
    ------
    RunError
        The folder holds a run and neither ``overwrite`` nor ``resume`` is set; or ``resume`` without a checkpoint.
    """
    run_dir = Path(run_dir)
    if overwrite and resume:
        raise RunError("--overwrite and --resume exclude each other.")
    if resume:
        last = run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT
        if not last.exists():
            raise RunError(f"Nothing to resume: no checkpoint at {last}.")
        return last
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"{run_dir} is a file, not a run folder.")
    if holds_run(run_dir):
        if not overwrite:
            raise RunError(f"{run_dir} holds a run already; pass --overwrite to replace it or --resume to continue it.")
        clear_run(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return None


def read_split(run_dir: str | Path) -> pd.Series:
    """The train/val/test label of each cell of a run."""
    path = Path(run_dir) / SPLIT_FILE
    if not path.exists():
        raise RunError(f"{run_dir} holds no run (no {SPLIT_FILE}).")
    try:
        return pd.read_csv(path, index_col=0)["split"]
    except (KeyError, ValueError, pd.errors.ParserError) as err:
        raise RunError(f"{path} is damaged; fit the run again.") from err


def subsets(adata: AnnData, split: pd.Series) -> dict[str, AnnData]:
    """The ``train``, ``val`` and ``test`` cells of ``adata`` by ``split``."""
    labels = split.reindex(adata.obs_names).to_numpy()
    return {name: adata[labels == name].copy() for name in ("train", "val", "test")}


@dataclass
class Run:
    """An opened run folder (see :func:`load_run`)."""

    run_dir: Path
    config: dict[str, Any]
    adata: AnnData
    split: pd.Series
    model: PerturbationModel | None = None
    _parts: dict[str, AnnData] | None = field(default=None, repr=False)

    def subsets(self) -> dict[str, AnnData]:
        """The ``train``, ``val`` and ``test`` cells of :attr:`adata` (copies, computed once)."""
        if self._parts is None:
            self._parts = subsets(self.adata, self.split)
        return self._parts

    def __iter__(self):
        """Unpack as ``model, adata, config``."""
        return iter((self.model, self.adata, self.config))


def write_config(run_dir: str | Path, config: dict[str, Any]) -> None:
    """Write the validated config of a run."""
    atomic_write_text(Path(run_dir) / CONFIG_FILE, yaml.safe_dump(config, sort_keys=False))


def write_split(run_dir: str | Path, split: pd.Series) -> None:
    """Write the split of a run."""
    atomic_write_text(Path(run_dir) / SPLIT_FILE, split.rename("split").to_csv())


def load_run(run_dir: str | Path, *, model: bool = True) -> Run:
    """Open a run folder written by ``pertpyro fit``: its config, its data (checked), its split and its model.

    Parameters
    ----------
    run_dir
        The run folder.
    model
        Load the model (on the training cells); ``False``: only config, data and split.

    Returns
    -------
    A :class:`Run`; ``model, adata, config = load_run(...)`` unpacks it.

    Raises
    ------
    RunError
        No run in the folder, or its data changed since the fit (shape or cell/gene names).
    """
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).exists():
        raise RunError(f"{run_dir} holds no run (no {CONFIG_FILE}).")
    config = read_config(run_dir / CONFIG_FILE)
    split = read_split(run_dir)
    adata = load_data(config)
    check_data(run_dir, adata)
    run = Run(run_dir, config, adata, split)
    if model:
        if not (run_dir / TENSORS_FILE).exists():
            raise RunError(f"{run_dir} holds no trained model (was the fit stopped? resume it with --resume).")
        run.model = PerturbationModel.load(run_dir, run.subsets()["train"])
    return run
