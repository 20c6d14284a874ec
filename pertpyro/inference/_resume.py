"""Checkpoints a killed fit resumes from exactly, and Ctrl-C that stops a fit between steps.

A Lightning checkpoint holds the module's parameters (the Pyro program's and guide's, as submodules), Adam's state,
the loop counters and the callbacks' states. For a resumed fit to end where an uninterrupted one would,
:class:`ResumeState` adds what Lightning does not keep: the random states (torch's, which draws Pyro's Monte-Carlo
noise and the loaders' base seeds, plus Python's and NumPy's) and the state of the generator that shuffles the
training cells. Checkpoints are written at the end of each epoch (after validation), so these are the states the
next epoch starts from.
"""

from __future__ import annotations

import random
import signal
import threading
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch.utils.data import DataLoader

from pertpyro._io import atomic_torch_save

LAST = "last"
BEST = "best"


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped training between two steps; ``history`` holds the epochs that finished."""

    def __init__(self, history: Any = None) -> None:
        super().__init__("training interrupted")
        self.history = history


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, but each file goes to a temporary file and is moved into place.

    A process killed while writing leaves the previous checkpoint intact instead of a truncated one.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("storage_options are not supported by AtomicCheckpointIO.")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(checkpoint, path)


def checkpoint_callback(folder: str | Path) -> ModelCheckpoint:
    """``last.ckpt`` every epoch and ``best.ckpt`` at the lowest validation loss, in ``folder``."""
    return ModelCheckpoint(
        dirpath=str(folder),
        filename=BEST,
        monitor="val_loss",
        mode="min",
        save_top_k=1,
        save_last=True,
        enable_version_counter=False,  # overwrite best.ckpt instead of writing best-v1.ckpt on resume
    )


def _sampler_generator(loader: DataLoader | None) -> torch.Generator | None:
    """The generator that shuffles ``loader``'s cells (a ``RandomSampler``'s, also inside a ``BatchSampler``)."""
    if loader is None:
        return None
    for outer in (getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
        for sampler in (outer, getattr(outer, "sampler", None)):
            generator = getattr(sampler, "generator", None)
            if isinstance(generator, torch.Generator):
                return generator
    return None


class ResumeState(Callback):
    """Saves and restores the random states and the shuffling generator with each checkpoint.

    Stored as tensors and plain numbers only, so that the checkpoint loads with ``weights_only=True``.
    """

    def __init__(self, train_loader: DataLoader | None) -> None:
        self.generator = _sampler_generator(train_loader)

    def state_dict(self) -> dict[str, Any]:
        version, mt, gauss = random.getstate()
        np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()  # noqa: NPY002 (the global state)
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "python": [version, list(mt), gauss],
            "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), np_pos, np_has_gauss, np_gauss],
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        if self.generator is not None:
            state["loader"] = self.generator.get_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        version, mt, gauss = state["python"]
        random.setstate((version, tuple(mt), gauss))
        name, keys, pos, has_gauss, gauss_np = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss_np))  # noqa: NPY002
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        if "loader" in state and self.generator is not None:
            self.generator.set_state(state["loader"])


class GracefulInterrupt(Callback):
    """Turns Ctrl-C during training into a stop after the current step (so no step is left half done).

    A second Ctrl-C interrupts at once. Only in the main thread (signal handlers cannot be set elsewhere).
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested:  # the second Ctrl-C: now
            raise KeyboardInterrupt
        self.requested = True

    def on_fit_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)

    def restore(self) -> None:
        """Put back the SIGINT handler that was in place before the fit (Lightning leaves SIG_IGN behind)."""
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, *args: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt

    def on_fit_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.restore()
