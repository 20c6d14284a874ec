"""Lightning wraps the ELBO: GPU when present, early stopping on the validation ELBO, progress bar, CSV log."""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path

import lightning.pytorch as pl
import pandas as pd
import pyro
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping
from lightning.pytorch.loggers import CSVLogger
from pyro.infer import TraceEnum_ELBO
from torch.utils.data import DataLoader

from pertpyro._settings import local_params
from pertpyro.data._loader import program_args
from pertpyro.models._program import MAX_PLATE_NESTING

logger = logging.getLogger(__name__)


class SVIModule(pl.LightningModule):
    """The negative ELBO of a model/guide pair as a Lightning module.

    The loss is ``-ELBO / n_cells`` (per cell), estimated on a minibatch with the ``cells`` plate subsampled, so
    local sites are scaled by ``n_cells / batch_size`` inside Pyro and global sites counted once.

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
    ):
        super().__init__()
        self.validate = validate
        self.program, self.guide = program, guide
        self.n_train, self.n_val, self.lr = n_train, n_val, lr
        self.elbo = TraceEnum_ELBO(max_plate_nesting=MAX_PLATE_NESTING)

    def _loss(self, batch: dict[str, torch.Tensor], n_cells: int) -> torch.Tensor:
        with local_params(), pyro.validation_enabled(self.validate):
            return self.elbo.differentiable_loss(self.program, self.guide, *program_args(batch, n_cells)) / n_cells

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch, self.n_train)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=batch["idx"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        # The held-out cells stand in for a training set of the same size, so that the global KL term weighs as
        # much per cell as in the training loss and the two are comparable. No gradients: the plain estimate.
        with local_params():
            loss = self.elbo.loss(self.program, self.guide, *program_args(batch, self.n_train)) / self.n_train
        self.log("val_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=batch["idx"].shape[0])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


class History(Callback):
    """Collects the epoch losses (one host sync per epoch) and stops on a non-finite loss."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k in ("train_loss", "val_loss")}
        self.rows.append({"epoch": trainer.current_epoch, **metrics})
        if not all(math.isfinite(v) for v in metrics.values()):
            raise FloatingPointError(f"The ELBO became {metrics} at epoch {trainer.current_epoch}; lower lr.")

    def frame(self) -> pd.DataFrame:
        """Losses per epoch."""
        return pd.DataFrame(self.rows, columns=["epoch", "train_loss", "val_loss"])


def fit(
    module: SVIModule,
    train_loader: DataLoader,
    val_loader: DataLoader,
    *,
    max_epochs: int,
    accelerator: str = "auto",
    devices: int | str = "auto",
    strategy: str = "auto",
    early_stopping: bool = True,
    patience: int = 20,
    log_dir: str | Path | None = None,
    progress_bar: bool = True,
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
        Lightning strategy (``"ddp"`` for several GPUs).
    early_stopping
        Stop when the validation loss has not improved for ``patience`` epochs.
    patience
        Epochs without improvement before stopping.
    log_dir
        Where the CSV log of the losses goes (``None``: no log files).
    progress_bar
        Show Lightning's progress bar.

    Returns
    -------
    DataFrame with columns ``epoch``, ``train_loss``, ``val_loss`` (negative ELBO per cell).
    """
    history = History()
    callbacks: list[Callback] = [history]
    if early_stopping:
        callbacks.append(EarlyStopping(monitor="val_loss", patience=patience, mode="min", min_delta=1e-4))
    lightning_logger = logging.getLogger("lightning.pytorch")
    level = lightning_logger.level
    lightning_logger.setLevel(logging.WARNING)  # no banner about absent TPUs in the user's log
    csv_logger = CSVLogger(str(log_dir), name="", version="") if log_dir is not None else False
    trainer = pl.Trainer(
        max_epochs=max_epochs,
        accelerator=accelerator,
        devices=devices,
        strategy=strategy,
        callbacks=callbacks,
        logger=csv_logger,
        enable_checkpointing=False,
        enable_progress_bar=progress_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        deterministic=False,
    )
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*number of training batches.*")
            warnings.filterwarnings("ignore", message=".*LeafSpec.*")
            trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader)
    finally:
        lightning_logger.setLevel(level)
    module.to("cpu")
    return history.frame()
