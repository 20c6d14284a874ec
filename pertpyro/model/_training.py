"""Training by stochastic variational inference: :meth:`PerturbationModel.train`."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from pertpyro._settings import seeded_by_argument
from pertpyro.data._blocks import holdout_rows
from pertpyro.data._loader import CellData, make_loader
from pertpyro.data._shuffle import is_shuffled
from pertpyro.data._spans import SPAN_SIZE, SpanData, make_span_loader, span_holdout
from pertpyro.data._stream import is_backed
from pertpyro.inference._device import pin_memory_for
from pertpyro.inference._lightning import SVIModule, fit
from pertpyro.inference._memory import kept_freed_memory
from pertpyro.inference._resume import TrainingInterrupted
from pertpyro.model._base import ModelBase

DEFAULT_PATIENCE = 20
"""Epochs without improvement of the validation ELBO before early stopping ends training."""

logger = logging.getLogger(__name__)


class TrainingMixin(ModelBase):
    """Fits the program and guide with Lightning (:mod:`pertpyro.inference`)."""

    @seeded_by_argument  # the global random states come back after training
    @kept_freed_memory()  # the allocator tuning only while training
    def train(
        self,
        *,
        max_epochs: int | None = None,
        batch_size: int = 512,
        lr: float = 5e-3,
        validation_adata: AnnData | None = None,
        validation_fraction: float = 0.1,
        accelerator: str = "auto",
        devices: int | str = "auto",
        strategy: str = "auto",
        early_stopping: bool = True,
        patience: int = DEFAULT_PATIENCE,
        seed: int = 0,
        log_dir: str | Path | None = None,
        progress_bar: bool = True,
        block_size: int = 1,
        checkpoint_dir: str | Path | None = None,
        ckpt_path: str | Path | None = None,
        sparse_targets: bool | None = None,
        span_size: int | None = None,
        num_workers: int | None = None,
    ) -> pd.DataFrame:
        """Fit model and guide by stochastic variational inference (Lightning underneath).

        Parameters
        ----------
        max_epochs
            Passes over the training cells; ``None`` picks ``min(400, max(50, 2e6 // n_cells))``.
        batch_size
            Cells per minibatch.
        lr
            Adam learning rate.
        validation_adata
            Held-out cells for the validation ELBO and early stopping; ``None`` holds out
            ``validation_fraction`` of the training cells at random.
        validation_fraction
            Fraction held out when ``validation_adata`` is ``None``.
        accelerator, devices, strategy
            Passed to ``lightning.Trainer`` (``accelerator="gpu"`` trains on a GPU).
        early_stopping
            Stop when the validation ELBO stalls for ``patience`` epochs.
        patience
            Epochs without improvement before stopping (a setting of early stopping: refused without it).
        seed
            Seed of minibatch order and of every Monte-Carlo draw (results are reproducible on CPU).
        log_dir
            Folder for the CSV log of the losses.
        progress_bar
            Show a progress bar.
        block_size
            For a backed (on-disk) AnnData: minibatches made of shuffled blocks of ``block_size`` consecutive cells
            (and the validation hold-out of whole blocks), read from disk in one piece each; 1 (default) draws cells
            fully at random. Not with several processes.
        checkpoint_dir
            Write Lightning checkpoints here: ``last.ckpt`` every epoch, ``best.ckpt`` at the best validation loss.
        ckpt_path
            Continue a killed fit from this checkpoint (call on a model built with the same settings and data, with
            the same ``train`` arguments): it ends with the parameters an uninterrupted fit would have.
        sparse_targets
            Steps that read and update only the effects of the targets in the minibatch, so that a step's cost does
            not grow with the screen's other targets (the loss stays an unbiased estimate of the ELBO; see
            :class:`pertpyro.inference.SVIModule`). ``None``: on from
            :data:`pertpyro.inference._lightning.SPARSE_TARGETS_MIN` targets, with ``block_size=1``, without ``grn``.
        span_size
            For an AnnData read from a file written by :func:`pertpyro.data.shuffle_h5ad` (cells in random order):
            minibatches made of spans of ``span_size`` consecutive cells, with span boundaries and order re-drawn
            every epoch, read in a few contiguous reads each (:mod:`pertpyro.data._spans`); every epoch still visits
            each cell once, and each minibatch is a uniformly random set of cells. ``None``:
            :data:`~pertpyro.data._spans.SPAN_SIZE` for such a file opened backed, else 1 (cells drawn one by one).
            Values above 1 need such a file. Not with several processes (DDP).
        num_workers
            DataLoader worker processes that read minibatches ahead of the training step (persistent across epochs;
            the span loader of :mod:`pertpyro.data._spans`, also with ``span_size=1``); 0 reads them in the training
            process. ``None``: 1 with spans from a backed AnnData, else 0. With ``span_size=1`` and ``num_workers=0``
            the minibatches of a backed AnnData are read in the training process by anndata (the fit is then the
            in-memory fit, bit for bit).

        Returns
        -------
        The loss history (also in ``history_``): negative ELBO per cell, train and validation.

        Notes
        -----
        On Linux, while training, glibc's allocator is tuned so that the step's large temporaries are reused instead
        of mapped afresh (:func:`pertpyro.inference.kept_freed_memory`; opt out with
        ``PERTPYRO_KEEP_FREED_MEMORY=0``). Python's, NumPy's and torch's global random states are the same after
        training as before (the fit draws from ``seed``).
        """
        if not early_stopping and patience != DEFAULT_PATIENCE:
            raise ValueError(
                f"patience={patience} is the patience of early stopping: it needs early_stopping=True (or leave it "
                "at its default)."
            )
        if sparse_targets and block_size != 1:
            raise ValueError("sparse_targets needs block_size=1 (minibatches that are uniformly random cell subsets).")
        given_spans = {"span_size": span_size, "num_workers": num_workers}  # re-resolved on every call
        span_size, num_workers = self._span_settings(span_size, num_workers, block_size)
        self.train_settings_ = {
            "max_epochs": max_epochs,
            "batch_size": batch_size,
            "lr": lr,
            "validation_fraction": validation_fraction,
            "early_stopping": early_stopping,
            "patience": patience,
            "seed": seed,
            "progress_bar": progress_bar,
            "sparse_targets": sparse_targets,
            **given_spans,
        }
        self._validation_adata = validation_adata
        n = len(self.cell_data)
        train_data: CellData | _RowSubset
        val_data: CellData | _RowSubset
        if validation_adata is None and span_size > 1:
            train_rows, val_rows = span_holdout(n, validation_fraction, seed)
            train_data, val_data = _RowSubset(self.cell_data, train_rows), _RowSubset(self.cell_data, val_rows)
        elif validation_adata is None:
            train_rows, val_rows = holdout_rows(n, validation_fraction, seed, block_size)
            train_data, val_data = _RowSubset(self.cell_data, train_rows), _RowSubset(self.cell_data, val_rows)
        else:
            train_data = self.cell_data
            val_data = self._cell_data(validation_adata)
        if max_epochs is None:
            max_epochs = int(min(400, max(50, 2_000_000 // len(train_data))))
        subset_rows = train_data.rows if isinstance(train_data, _RowSubset) else None
        module = SVIModule(
            self.program,
            self.guide,
            n_train=len(train_data),
            n_val=len(val_data),
            lr=lr,
            seed=seed,
            target_cells=torch.from_numpy(self.cell_data.target_cells(subset_rows)).float(),
            # with blocks the minibatches are not uniformly random cell subsets (the inclusion probabilities differ)
            sparse_targets=sparse_targets if block_size == 1 else False,
        )
        pin = pin_memory_for(accelerator)  # page-locked batches, copied asynchronously, only for a CUDA GPU
        if span_size > 1 or num_workers > 0:  # runs of cells read by worker processes
            train_loader = make_span_loader(
                SpanData(self.cell_data, subset_rows, sparse=pin),
                batch_size=batch_size,
                span_size=span_size,
                shuffle=True,
                seed=seed,
                num_workers=num_workers,
                pin_memory=pin,
            )
            val_cells, val_rows_ = (
                (val_data.data, val_data.rows) if isinstance(val_data, _RowSubset) else (val_data, None)
            )
            val_spans = SpanData(val_cells, val_rows_, sparse=pin)  # counts sparse up to a GPU, dense for the CPU
            val_loader = make_span_loader(
                val_spans,
                batch_size=max(batch_size, 2048),
                span_size=span_size,
                shuffle=False,
                num_workers=num_workers,
                pin_memory=pin,
            )
        else:
            train_loader = make_loader(
                train_data, batch_size=batch_size, shuffle=True, seed=seed, pin_memory=pin, block_size=block_size
            )
            val_loader = make_loader(val_data, batch_size=max(batch_size, 2048), shuffle=False, pin_memory=pin)
        logger.info(
            "Training on %d cells, validating on %d, for at most %d epochs.", len(train_data), len(val_data), max_epochs
        )
        try:
            history = fit(
                module,
                train_loader,
                val_loader,
                max_epochs=max_epochs,
                accelerator=accelerator,
                devices=devices,
                strategy=strategy,
                early_stopping=early_stopping,
                patience=patience,
                log_dir=log_dir,
                progress_bar=progress_bar,
                checkpoint_dir=checkpoint_dir,
                ckpt_path=ckpt_path,
            )
        except TrainingInterrupted as stop:  # Ctrl-C: keep what was trained, then let the interrupt through
            self._record_history(stop.history)
            raise
        self._record_history(history)
        return history

    def _span_settings(self, span_size: int | None, num_workers: int | None, block_size: int) -> tuple[int, int]:
        """``span_size`` and ``num_workers`` of :meth:`train`, their defaults filled in and checked.

        The span loader (:mod:`pertpyro.data._spans`) runs when ``span_size > 1`` or ``num_workers > 0``.
        """
        shuffled, backed = is_shuffled(self.adata), is_backed(self.cell_data.counts)
        if span_size is None:
            span_size = SPAN_SIZE if shuffled and backed and block_size == 1 else 1
        if span_size < 1:
            raise ValueError(f"span_size must be positive, got {span_size}.")
        if span_size > 1 and not shuffled:
            raise ValueError(
                "span_size > 1 reads runs of consecutive cells, which are random sets of cells only in a file whose "
                "cells are in random order: convert the file once with pertpyro.data.shuffle_h5ad(src, dst) "
                "(or `pertpyro shuffle SRC DST`) and train from dst."
            )
        if num_workers is None:
            num_workers = 1 if backed and span_size > 1 else 0
        if num_workers < 0:
            raise ValueError(f"num_workers must be non-negative, got {num_workers}.")
        if block_size > 1 and (span_size > 1 or num_workers > 0):
            raise ValueError("block_size > 1 goes with span_size=1 and num_workers=0 (spans replace blocks).")
        return span_size, num_workers

    def _record_history(self, history: pd.DataFrame | None) -> None:
        if history is not None:
            self.history_ = history if self.history_ is None else pd.concat([self.history_, history], ignore_index=True)
            self.is_trained = True


class _RowSubset(torch.utils.data.Dataset):
    """A view of some rows of a :class:`CellData` (the random validation hold-out)."""

    def __init__(self, data: CellData, rows: np.ndarray) -> None:
        self.data, self.rows = data, np.asarray(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, idx: list[int] | np.ndarray) -> dict[str, torch.Tensor]:
        batch = self.data[self.rows[np.asarray(idx)]]
        batch["idx"] = torch.as_tensor(np.sort(np.asarray(idx)))
        return batch
