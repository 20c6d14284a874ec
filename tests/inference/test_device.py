"""GPU readiness checked on CPU: no hard-coded device, pinned memory only for CUDA, no host sync in a step."""

import re
import traceback
import warnings
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pyro
import pytest
import torch
from lightning.pytorch.accelerators import CPUAccelerator, CUDAAccelerator
from pyro import poutine
from pyro.infer import TraceEnum_ELBO
from pyro.poutine.subsample_messenger import _Subsample

import pertpyro
from pertpyro.data._loader import make_loader, program_args
from pertpyro.inference._device import pin_memory_for
from pertpyro.inference._lightning import SVIModule
from pertpyro.module._distributions import NegativeBinomialLogMean
from pertpyro.module._program import MAX_PLATE_NESTING

PACKAGE = Path(pertpyro.__file__).parent


def test_no_hard_coded_cuda_device():
    pattern = re.compile(r"\.cuda\(|device\s*=\s*['\"]cuda|torch\.device\(['\"]cuda")
    offenders = [
        f"{path.relative_to(PACKAGE)}:{i}"
        for path in PACKAGE.rglob("*.py")
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []


def test_training_step_follows_the_parameters(tiny_adata):
    """Every tensor of a step derives from the modules or the batch: moved to float64, nothing stays float32.

    A tensor created without taking the device (and dtype) of the parameters would stay a default CPU float32
    tensor here, as it would stay on the CPU when the modules move to a GPU.
    """
    model = pertpyro.PerturbationModel(tiny_adata, sparse_effects=True, latent_dim=3, n_hidden=8)
    program, guide = model.program.double(), model.guide.double()
    batch = next(iter(make_loader(model.cell_data, batch_size=64, shuffle=True)))
    batch = {k: v.double() if v.is_floating_point() else v for k, v in batch.items()}
    args = program_args(batch, len(model.cell_data))
    guide_trace = poutine.trace(guide).get_trace(*args)
    model_trace = poutine.trace(poutine.replay(program, trace=guide_trace)).get_trace(*args)
    model_trace.compute_log_prob()
    float_values = {
        f"{name}.{part}": value.dtype
        for trace in (guide_trace, model_trace)
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not isinstance(site["fn"], _Subsample)  # skip the plates' index sites
        for part, value in (("value", site["value"]), ("log_prob", site.get("log_prob")))
        if isinstance(value, torch.Tensor) and value.is_floating_point()
    }
    assert len(float_values) > 5
    assert set(float_values.values()) == {torch.float64}, float_values
    module = SVIModule(program, guide, n_train=len(model.cell_data), n_val=1, lr=1e-3)
    loss = module._loss(batch, len(model.cell_data))
    loss.backward()
    assert loss.dtype == torch.float64
    assert all(p.grad is None or p.grad.dtype == torch.float64 for p in module.parameters())


def test_pinned_memory_only_for_cuda(tiny_adata, monkeypatch):
    assert not pin_memory_for("cpu")
    assert not pin_memory_for(CPUAccelerator())
    assert pin_memory_for(CUDAAccelerator())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert [pin_memory_for(a) for a in ("gpu", "cuda", "auto", "cpu", "mps")] == [True, True, True, False, False]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert [pin_memory_for(a) for a in ("gpu", "auto")] == [False, False]
    # The model's loaders follow the accelerator (recorded, CPU training).
    seen = []
    real = pertpyro.model._training.make_loader
    monkeypatch.setattr(
        pertpyro.model._training, "make_loader", lambda *a, **k: seen.append(k["pin_memory"]) or real(*a, **k)
    )
    model = pertpyro.PerturbationModel(tiny_adata, latent_dim=2, n_hidden=8)
    model.train(max_epochs=1, accelerator="cpu", progress_bar=False)
    assert seen == [False, False]


_SYNCS = ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__")


class _CountSyncs(pl.Callback):
    """Records device-to-host reads of tensor values made between the start and the end of each training batch."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []
        self.steps = 0
        self._saved: dict = {}

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.steps += 1
        for name in _SYNCS:
            original = getattr(torch.Tensor, name)
            self._saved[name] = original

            def spy(tensor, *args, _original=original, _name=name, **kwargs):
                frames = [f"{f.filename}:{f.lineno}" for f in traceback.extract_stack()[:-1]]
                self.calls.append((_name, frames))
                return _original(tensor, *args, **kwargs)

            setattr(torch.Tensor, name, spy)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        for name, original in self._saved.items():
            setattr(torch.Tensor, name, original)


def _sync_callers(model, elbo=None) -> tuple[list[str], int]:
    """Files that read a tensor value back to the host during one epoch of training, and the number of steps."""
    module = SVIModule(model.program, model.guide, n_train=len(model.cell_data), n_val=len(model.cell_data), lr=1e-3)
    if elbo is not None:
        module.elbo = elbo
    loader = make_loader(model.cell_data, batch_size=60, shuffle=True)
    spy = _CountSyncs()
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[spy],
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Lightning's advice about workers and batch counts
            trainer.fit(module, train_dataloaders=loader, val_dataloaders=loader)
    finally:
        spy.on_train_batch_end(None, None, None, None, 0)
    # Who asked for each value: the innermost frame outside torch's own tensor code.
    torch_dir, optim_dir = str(Path(torch.__file__).parent), str(Path(torch.optim.__file__).parent)
    callers = [
        next(f for f in reversed(frames) if not f.startswith(torch_dir) or f.startswith(optim_dir))
        for _, frames in spy.calls
    ]
    return callers, spy.steps


def test_no_host_sync_in_pertpyro_training_step(tiny_adata):
    """The step (forward, backward, optimiser, logging) reads no tensor value back to the host.

    The training loss (``CellEnumELBO``) has none; Pyro's general ``TraceEnum_ELBO`` has a few per step (a NaN check
    of the loss, a ``mask.all()`` per enumerated cost term), which shows that the spy sees them.
    """
    model = pertpyro.PerturbationModel(tiny_adata, latent_dim=2, n_hidden=8)
    callers, steps = _sync_callers(model)
    assert steps == 4
    optim_dir, pyro_dir = str(Path(torch.optim.__file__).parent), str(Path(pyro.__file__).parent)
    # Only Adam reading its step counter (a CPU tensor even when training on a GPU, so no device sync).
    assert [c for c in callers if not c.startswith(optim_dir)] == []
    reference, steps = _sync_callers(model, TraceEnum_ELBO(max_plate_nesting=MAX_PLATE_NESTING))
    assert [c for c in reference if c.startswith(str(PACKAGE))] == []
    assert sum(c.startswith(pyro_dir) for c in reference) / steps > 0


@pytest.mark.parametrize(("dtype", "fails"), [(torch.bfloat16, True), (torch.float16, True), (torch.float32, False)])
def test_half_precision_breaks_the_count_likelihood(dtype, fails):
    """Why training stays in float32: the negative binomial's lgamma terms cancel at large counts."""
    counts = torch.tensor([0.0, 3.0, 50.0, 800.0])
    log_mean, log_theta = torch.log(counts + 0.7), torch.log(torch.tensor(1.3))
    exact = NegativeBinomialLogMean(log_mean.double(), log_theta.double()).log_prob(counts.double())
    low = NegativeBinomialLogMean(log_mean.to(dtype), log_theta.to(dtype)).log_prob(counts.to(dtype)).double()
    error = (low - exact).abs().max().item()
    assert (error > 0.5) == fails, error
    np.testing.assert_allclose(low[:2].numpy(), exact[:2].numpy(), atol=0.05)  # small counts survive
