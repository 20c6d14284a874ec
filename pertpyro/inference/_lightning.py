"""Lightning wraps the ELBO: GPU when present, early stopping on the validation ELBO, progress bar, CSV log."""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import pyro
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.strategies import DDPStrategy, Strategy
from pyro.infer import TraceEnum_ELBO
from torch.utils.data import DataLoader

from pertpyro._settings import local_params
from pertpyro.data._loader import program_args, shard_loader
from pertpyro.inference._direct import direct_attributes
from pertpyro.inference._elbo import CellEnumELBO
from pertpyro.inference._guards import NaNGuard, TrainingDivergedError
from pertpyro.inference._resume import (
    AtomicCheckpointIO,
    GracefulInterrupt,
    ResumeState,
    TrainingInterrupted,
    checkpoint_callback,
)
from pertpyro.module._program import MAX_PLATE_NESTING, SPARSE_GUIDE_PARAMETERS
from pertpyro.module._targets import present_targets

SPARSE_TARGETS_MIN = 500
"""Targets from which training steps read only the minibatch's targets by default (``SVIModule(sparse_targets=None)``).

Measured by ``benchmarks/targets_step.py`` (20k cells, 2k genes, batch 512, one thread, shared machine): the sparse
step costs ~3-6% more than the every-target step at 25, 100 and 300 targets (a fixed overhead per step), 30% less at
1000 and 12 times less at 10k; the crossover interpolates to ~350 targets."""

logger = logging.getLogger(__name__)


class SVIModule(pl.LightningModule):
    """The negative ELBO of a model/guide pair as a Lightning module.

    The loss is ``-ELBO / n_cells`` (per cell), estimated on a minibatch with the ``cells`` plate subsampled, so
    local sites are scaled by ``n_cells / batch_size`` inside Pyro and global sites counted once.

    With several processes (DDP) each process draws its minibatches from its own shard of the cells, but the plate
    size stays ``n_train``: every process's loss is an unbiased estimate of the full-data ELBO per cell, and DDP's
    average of their gradients is one too. Each process then draws its own Monte-Carlo noise (seeded by ``seed``
    and its rank), and the logged epoch losses are averaged across processes.

    Parameters
    ----------
    program
        The model (a ``PyroModule``).
    guide
        The guide (a ``PyroModule``).
    n_train
        Number of training cells (the ``cells`` plate size during training).
    n_val
        Number of validation cells.
    lr
        Adam learning rate.
    validate
        Run Pyro's and torch's argument and shape checks in every step (slower; the tests turn it on).
    seed
        Seed of the Monte-Carlo draws of each process in a multi-process run (one process keeps the global RNG).
    target_cells
        Number of training cells carrying each target, ``(T,)``: needed by the sparse step.
    sparse_targets
        Training steps that read and update only the global target sites of the targets present in the minibatch
        (:mod:`pertpyro.module._targets`): each present target's terms weighted by the inverse probability that a
        minibatch holds it (the loss stays an unbiased estimate of the full ELBO), the guide's targets x genes
        parameters updated row-wise by ``torch.optim.SparseAdam`` (lazy Adam), the rest by Adam. The cost of a step
        then follows the minibatch's targets, not the screen's. ``None``: on from
        :data:`SPARSE_TARGETS_MIN` targets when ``target_cells`` is given (not with the ``grn`` block, which reads
        every target's effect). Off in a multi-process run. Validation steps always read every target.
    """

    def __init__(
        self,
        program: torch.nn.Module,
        guide: torch.nn.Module,
        *,
        n_train: int,
        n_val: int,
        lr: float,
        validate: bool = False,
        seed: int = 0,
        target_cells: torch.Tensor | None = None,
        sparse_targets: bool | None = None,
    ):
        super().__init__()
        self.validate, self.seed = validate, seed
        n_targets = 0 if target_cells is None else int(target_cells.shape[0])
        per_guide = getattr(program, "guide_rates", None) is not None  # every guide's rate reads every target's
        if sparse_targets is None:
            sparse_targets = n_targets >= SPARSE_TARGETS_MIN and getattr(program, "grn", None) is None and not per_guide
        if sparse_targets and per_guide:
            raise ValueError(
                "sparse_targets does not apply to per-guide response rates (efficacy_per_guide), whose prior reads "
                "every target's rate; train with sparse_targets=False or build the model with efficacy_per_guide=False."
            )
        if sparse_targets and target_cells is None:
            raise ValueError("sparse_targets needs target_cells, the number of training cells carrying each target.")
        if sparse_targets and getattr(program, "grn", None) is not None:
            raise ValueError("sparse_targets does not apply to the grn block, which reads every target's effect.")
        self.sparse_targets = bool(sparse_targets)
        self.automatic_optimization = not self.sparse_targets  # two optimizers, stepped in training_step
        self.register_buffer("target_cells", target_cells, persistent=False)
        self._sync_dist = False  # average logged losses across processes (set in setup when there are several)
        self.program, self.guide = program, guide
        self.n_train, self.n_val, self.lr = n_train, n_val, lr
        self.elbo = CellEnumELBO(max_plate_nesting=MAX_PLATE_NESTING)  # TraceEnum_ELBO's value, less overhead

    def _elbo_call(self, method: str, batch: dict[str, torch.Tensor], n_cells: int, targets=None):
        """Call ``self.elbo.<method>(program, guide, ...)``.

        A program outside :class:`CellEnumELBO`'s shortcut switches to the general ``TraceEnum_ELBO`` (same value).
        The modules' parameters are read without ``pyro.param`` statements (:func:`direct_attributes`): the ELBO reads
        only sample sites and the optimiser holds the parameters, so the statements would only cost time.
        """
        args = tuple(program_args(batch, n_cells, targets=targets))
        while len(args) > 7 and args[-1] is None:  # programs written for the documented signature take no
            args = args[:-1]  # ``targets`` / ``artifact_evidence`` arguments: trailing unused ones are left out
        try:
            with direct_attributes(self.program, self.guide):
                try:
                    return getattr(self.elbo, method)(self.program, self.guide, *args)
                except NotImplementedError as reason:
                    if isinstance(self.elbo, TraceEnum_ELBO):
                        raise
                    logger.info("Training with TraceEnum_ELBO: %s", reason)
                    self.elbo = TraceEnum_ELBO(max_plate_nesting=MAX_PLATE_NESTING)
                    return getattr(self.elbo, method)(self.program, self.guide, *args)
        except (ValueError, RuntimeError) as err:  # e.g. Pyro's checks refusing non-finite parameters
            guard = getattr(self, "_nan_guard", None)
            diverged = guard.failed_step(self, self.trainer.global_step) if guard is not None else None
            if diverged is not None:
                raise diverged from err
            raise

    def _loss(self, batch: dict[str, torch.Tensor], n_cells: int, *, sparse: bool = False) -> torch.Tensor:
        """Negative ELBO per cell of a training minibatch; ``sparse``: the step over the minibatch's targets."""
        targets = (
            present_targets(batch["perturbation"], cast(torch.Tensor, self.target_cells), n_cells) if sparse else None
        )
        with local_params(), pyro.validation_enabled(self.validate):
            return self._elbo_call("differentiable_loss", batch, n_cells, targets) / n_cells

    def setup(self, stage: str) -> None:
        world_size = self.trainer.world_size
        self._sync_dist = world_size > 1
        if world_size > 1 and self.sparse_targets:  # the inclusion probabilities are those of one process's sampler
            logger.info("Training every target's effects in each step (several processes).")
            self.sparse_targets, self.automatic_optimization = False, True
        if world_size > 1:  # independent Monte-Carlo noise per process, reproducible
            pyro.set_rng_seed(int(np.random.SeedSequence([self.seed, self.trainer.global_rank]).generate_state(1)[0]))

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch, self.n_train, sparse=self.sparse_targets)
        if self.sparse_targets:
            optimizers = cast(list, self.optimizers())
            for optimizer in optimizers:
                optimizer.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            for optimizer in optimizers:
                optimizer.step()
        self.log(
            "train_loss",
            loss,
            on_step=False,
            on_epoch=True,
            prog_bar=True,
            batch_size=batch["idx"].shape[0],
            sync_dist=self._sync_dist,  # only at the end of the epoch (on_step=False): no sync in the step
        )
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        # The held-out cells stand in for a training set of the same size, so that the global KL term weighs as
        # much per cell as in the training loss and the two are comparable. No gradients: the plain estimate.
        with local_params():
            loss = self._elbo_call("loss", batch, self.n_train) / self.n_train
        self.log(
            "val_loss",
            loss,
            on_step=False,
            on_epoch=True,
            prog_bar=True,
            batch_size=batch["idx"].shape[0],
            sync_dist=self._sync_dist,
        )

    def configure_optimizers(self) -> torch.optim.Optimizer | list[torch.optim.Optimizer]:
        if not self.sparse_targets:
            return torch.optim.Adam(self.parameters(), lr=self.lr)
        return sparse_and_dense_adam(self.guide, self.parameters(), self.lr)


def sparse_and_dense_adam(
    guide: torch.nn.Module, parameters: Iterable[torch.nn.Parameter], lr: float
) -> list[torch.optim.Optimizer]:
    """Adam for every parameter but the guide's targets x genes ones, which ``SparseAdam`` updates row-wise."""
    named = dict(guide.named_parameters())
    sparse = [named[name] for name in SPARSE_GUIDE_PARAMETERS if name in named]
    ids = {id(p) for p in sparse}
    dense = [p for p in parameters if id(p) not in ids]
    return [torch.optim.Adam(dense, lr=lr), torch.optim.SparseAdam(sparse, lr=lr)]


_HISTORY_KEY = "_pertpyro_history"
_HISTORY_COLUMNS = ["epoch", "train_loss", "val_loss"]


class History(Callback):
    """Collects the epoch losses (one host sync per epoch) and stops on a non-finite loss.

    In spawned worker processes (``strategy="ddp_spawn"``) the rows go back to the main process as a tensor among
    the trainer's ``callback_metrics``, which Lightning returns from rank 0 (see :meth:`recover`).
    """

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k in ("train_loss", "val_loss")}
        self.rows.append({"epoch": trainer.current_epoch, **metrics})
        if not all(math.isfinite(v) for v in metrics.values()):
            bad = ", ".join(f"{k} {v}" for k, v in metrics.items())
            raise TrainingDivergedError(trainer.global_step, float("nan"), getattr(module, "lr", None), None) from (
                FloatingPointError(f"{bad} at epoch {trainer.current_epoch}")
            )

    def on_train_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.world_size > 1:
            table = [[row.get(c, math.nan) for c in _HISTORY_COLUMNS] for row in self.rows]
            trainer.callback_metrics[_HISTORY_KEY] = torch.tensor(table, dtype=torch.float64).reshape(-1, 3)

    def state_dict(self) -> dict[str, Any]:
        return {"rows": [[row.get(c, math.nan) for c in _HISTORY_COLUMNS] for row in self.rows]}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # resumed from a checkpoint: its epochs come first
        self.rows = [
            {"epoch": int(row[0]), **{c: v for c, v in zip(_HISTORY_COLUMNS[1:], row[1:], strict=True) if v == v}}
            for row in state["rows"]
        ]

    def recover(self, trainer: pl.Trainer) -> None:
        """Take the rows from the trainer's metrics if the epochs ran in other processes (and drop them there)."""
        table = trainer.callback_metrics.pop(_HISTORY_KEY, None)
        if table is not None and not self.rows:
            self.rows = [
                {
                    "epoch": int(row[0]),
                    **{c: v for c, v in zip(_HISTORY_COLUMNS[1:], row[1:], strict=True) if math.isfinite(v)},
                }
                for row in table.tolist()
            ]

    def frame(self) -> pd.DataFrame:
        """Losses per epoch."""
        return pd.DataFrame(self.rows, columns=_HISTORY_COLUMNS)


_DDP_STRATEGIES = ("ddp", "ddp_spawn", "ddp_fork", "ddp_notebook")


def _ddp_allowing_unused(strategy: str | Strategy) -> str | Strategy:
    """The DDP strategy named ``strategy`` with ``find_unused_parameters=True`` (other strategies unchanged).

    Some parameters get no gradient in a model configuration (the effect-mask logits without sparse effects),
    which plain DDP rejects.
    """
    if isinstance(strategy, str) and strategy in _DDP_STRATEGIES:
        return f"{strategy}_find_unused_parameters_true"
    return strategy


def _log_version(log_dir: str | Path, ckpt_path: str | Path | None) -> str:
    """The CSV log's subfolder: none for a new fit; ``resumed``, ``resumed-2``, ... for each resumption.

    A resumed fit writes its losses beside the first fit's log instead of over it.
    """
    if ckpt_path is None:
        return ""
    n, name = 1, "resumed"
    while (Path(log_dir) / name).exists():
        n += 1
        name = f"resumed-{n}"
    return name


def fit(
    module: SVIModule,
    train_loader: DataLoader,
    val_loader: DataLoader,
    *,
    max_epochs: int,
    accelerator: str = "auto",
    devices: int | str = "auto",
    strategy: str | Strategy = "auto",
    early_stopping: bool = True,
    patience: int = 20,
    log_dir: str | Path | None = None,
    progress_bar: bool = True,
    checkpoint_dir: str | Path | None = None,
    ckpt_path: str | Path | None = None,
) -> pd.DataFrame:
    """Train ``module`` with Lightning and return the per-epoch loss history.

    Parameters
    ----------
    module
        The ELBO module.
    train_loader
        Minibatches of training cells.
    val_loader
        Minibatches of validation cells.
    max_epochs
        Maximum number of passes over the training cells.
    accelerator
        Lightning accelerator (``"auto"``, ``"cpu"``, ``"gpu"``).
    devices
        Lightning devices.
    strategy
        Lightning strategy. Several devices (``devices=2``, or ``"auto"`` on a multi-GPU machine) run data-parallel
        (DDP): each process trains on its own shard of the cells, gradients are averaged. ``"ddp"`` re-runs the
        calling script in each process (rank 0 is the calling process); ``"ddp_spawn"`` starts workers from this
        process (which needs an ``if __name__ == "__main__":`` guard) and copies the trained rank-0 weights and the
        loss history back here; ``"ddp_notebook"`` forks, for notebooks. The DDP strategies named by a string allow
        parameters without a gradient (the effect-mask logits when ``sparse_effects=False``); a ``DDPStrategy``
        object is used as given.
    early_stopping
        Stop when the validation loss has not improved for ``patience`` epochs.
    patience
        Epochs without improvement before stopping.
    log_dir
        Where the CSV log of the losses goes (``None``: no log files).
    progress_bar
        Show Lightning's progress bar.
    checkpoint_dir
        Write ``last.ckpt`` (every epoch) and ``best.ckpt`` (lowest validation loss) here (``None``: none).
    ckpt_path
        Resume from this checkpoint: parameters, Adam's state, epoch, early-stopping state, loss history, random
        states and the order of the training cells, so that the fit ends where an uninterrupted one would.

    Returns
    -------
    DataFrame with columns ``epoch``, ``train_loss``, ``val_loss`` (negative ELBO per cell).

    Raises
    ------
    TrainingDivergedError
        The loss or the parameters became non-finite (the module keeps the last finite parameters).
    TrainingInterrupted
        Ctrl-C (a ``KeyboardInterrupt``): training stopped after the current step; ``.history`` holds the
        finished epochs.
    """
    if ckpt_path is not None and checkpoint_dir is None:  # a resumed fit goes on writing beside its checkpoint
        checkpoint_dir = Path(ckpt_path).parent
    history = History()
    interrupt, resume = GracefulInterrupt(), ResumeState(None)
    callbacks: list[Callback] = [NaNGuard(), history, interrupt, resume]  # the guard first: it restores parameters
    if early_stopping:
        callbacks.append(EarlyStopping(monitor="val_loss", patience=patience, mode="min", min_delta=1e-4))
    if checkpoint_dir is not None:
        callbacks.append(checkpoint_callback(checkpoint_dir))
    lightning_logger = logging.getLogger("lightning.pytorch")
    level = lightning_logger.level
    lightning_logger.setLevel(logging.WARNING)  # no banner about absent TPUs in the user's log
    csv_logger = CSVLogger(str(log_dir), name="", version=_log_version(log_dir, ckpt_path)) if log_dir else False
    trainer_kwargs = {
        "max_epochs": max_epochs,
        "accelerator": accelerator,
        "devices": devices,
        "callbacks": callbacks,
        "logger": csv_logger,
        "use_distributed_sampler": False,  # the loaders shard the cells themselves (below)
        "enable_checkpointing": checkpoint_dir is not None,
        "plugins": [AtomicCheckpointIO()] if checkpoint_dir is not None else None,
        "enable_progress_bar": progress_bar,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "log_every_n_steps": 1,
        "deterministic": False,
    }
    trainer = pl.Trainer(strategy=_ddp_allowing_unused(strategy), **trainer_kwargs)
    if strategy == "auto" and isinstance(trainer.strategy, DDPStrategy):  # Lightning chose DDP for several devices
        forked = trainer.strategy.launcher is not None and trainer.strategy.launcher.is_interactive_compatible
        trainer = pl.Trainer(strategy=_ddp_allowing_unused("ddp_fork" if forked else "ddp"), **trainer_kwargs)
    if trainer.num_devices * trainer.num_nodes > 1:
        train_loader, val_loader = shard_loader(train_loader), shard_loader(val_loader)
    resume.generator = ResumeState(train_loader).generator  # the loader that runs (after any sharding)
    # Multi-threaded CPU kernels (e.g. the backward of indexing by batch) may sum in a different order from run to
    # run; deterministic algorithms make a seeded fit reproducible bit for bit. The user's setting is restored.
    deterministic = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*number of training batches.*")
            warnings.filterwarnings("ignore", message=".*LeafSpec.*")
            warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")
            with local_params():  # parameters restored from a checkpoint stay in the modules
                trainer.fit(
                    module,
                    train_dataloaders=train_loader,
                    val_dataloaders=val_loader,
                    ckpt_path=None if ckpt_path is None else str(ckpt_path),
                    weights_only=True if ckpt_path is not None else None,  # no code from the file runs
                )
    except SystemExit:  # Lightning ends a KeyboardInterrupt with sys.exit(1): give the caller the interrupt back
        if not trainer.interrupted:
            raise
    finally:
        interrupt.restore()
        lightning_logger.setLevel(level)
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
        module.to("cpu")  # also after an error: the model's parameters live on the CPU between calls
    history.recover(trainer)
    if trainer.interrupted:
        raise TrainingInterrupted(history.frame())
    return history.frame()
