"""Stop a diverging fit with a clear error and keep the last finite parameters.

Cost of the check. Knowing whether a loss is finite on the host needs a device -> host sync, which on a GPU stalls
the queue of kernels every step. So the guard keeps its verdict on the device: each step adds a few device-side
operations (is the loss finite, are the parameters finite: one fused ``_foreach_norm`` over all parameters; the
first bad step and its loss are recorded with ``torch.where``) and reads the verdict on the host only every
``every`` steps and at the end of each epoch. When the verdict is good the parameters are copied into a snapshot
(one fused copy); when it is bad the snapshot is copied back and :class:`TrainingDivergedError` is raised.
On the CPU a sync costs nothing, so there the check runs every step and names the exact step; the copy per step
is O(parameters), small next to the step's O(batch x genes) work.

A step whose parameters are already non-finite may fail inside Pyro's argument checks before any loss exists;
:class:`~pertpyro.inference.SVIModule` turns that failure into the same error (:meth:`NaNGuard.failed_step`).
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback


class TrainingDivergedError(RuntimeError):
    """The ELBO or the parameters became non-finite during training.

    Attributes
    ----------
    step
        Global optimiser step at which the non-finite value appeared.
    loss
        The loss of that step (``nan`` when the step could not compute one).
    """

    def __init__(self, step: int, loss: float, lr: float | None, restored_step: int | None) -> None:
        self.step, self.loss = step, loss
        kept = (
            f"the model keeps its parameters from step {restored_step}, the last finite ones"
            if restored_step is not None
            else "the model keeps its initial parameters"
        )
        advice = f"lower the learning rate (lr={lr:g}; try lr={lr / 10:g})" if lr else "lower the learning rate (lr)"
        what = (
            f"the loss became {loss}"
            if loss != loss or abs(loss) == float("inf")
            else "the parameters became non-finite"
        )
        super().__init__(
            f"Training diverged at step {step}: {what}; {kept}. To fix it, {advice}, or use a larger batch_size."
        )


def _parameters(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p for p in module.parameters() if p.is_floating_point()]


class NaNGuard(Callback):
    """Checks the training loss and parameters for non-finite values (see the module docstring for the cost).

    Parameters
    ----------
    every
        Steps between host reads of the verdict; ``None``: 1 on the CPU, 50 on an accelerator.
    """

    default_every: int | None = None

    def __init__(self, every: int | None = None) -> None:
        self.every = every if every is not None else self.default_every
        self._snapshot: list[torch.Tensor] | None = None
        self._snapshot_step: int | None = None

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        params = _parameters(module)
        device = params[0].device if params else torch.device("cpu")
        if self.every is None:
            self.every = 1 if device.type == "cpu" else 50
        self._bad = torch.zeros((), dtype=torch.bool, device=device)
        self._first_step = torch.full((), -1, dtype=torch.long, device=device)
        self._first_loss = torch.zeros((), device=device)
        self._take_snapshot(params, trainer.global_step)
        module._nan_guard = self  # the module reports steps that fail on non-finite parameters

    def _take_snapshot(self, params: list[torch.Tensor], step: int) -> None:
        with torch.no_grad():
            if self._snapshot is None or len(self._snapshot) != len(params):
                self._snapshot = [p.detach().clone() for p in params]
            else:
                torch._foreach_copy_(self._snapshot, [p.detach() for p in params])
        self._snapshot_step = step

    def on_train_batch_end(
        self, trainer: pl.Trainer, module: pl.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        params = _parameters(module)
        with torch.no_grad():
            norms = torch.stack(torch._foreach_norm([p.detach() for p in params])) if params else loss.new_zeros(1)
            bad_now = ~torch.isfinite(loss.detach()) | ~torch.isfinite(norms).all()
            first = bad_now & ~self._bad
            step = trainer.global_step  # the step just taken is step - 1; its update made the parameters
            self._first_step = torch.where(first, torch.full_like(self._first_step, step), self._first_step)
            self._first_loss = torch.where(first, loss.detach().to(self._first_loss.dtype), self._first_loss)
            self._bad |= bad_now
        if step % self.every == 0:
            self._check(trainer, module)

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._check(trainer, module)

    def on_validation_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if hasattr(self, "_bad"):  # validation inside fit runs after the epoch's steps: check them first
            self._check(trainer, module)

    def _check(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        params = _parameters(module)
        if not bool(self._bad):  # the one host sync
            self._take_snapshot(params, trainer.global_step)
            return
        raise self._diverged(module, int(self._first_step), float(self._first_loss))

    def failed_step(self, module: pl.LightningModule, step: int) -> TrainingDivergedError | None:
        """The error to raise for a step that failed, if the parameters are non-finite (else ``None``)."""
        params = _parameters(module)
        if all(bool(torch.isfinite(p).all()) for p in params):
            return None
        return self._diverged(module, step, float("nan"))

    def _diverged(self, module: pl.LightningModule, step: int, loss: float) -> TrainingDivergedError:
        params = _parameters(module)
        restored = None
        if self._snapshot is not None and len(self._snapshot) == len(params):
            with torch.no_grad():
                torch._foreach_copy_(params, self._snapshot)
            restored = self._snapshot_step
        return TrainingDivergedError(step, loss, getattr(module, "lr", None), restored)
