"""Where training runs: which accelerator Lightning will use, and whether the loaders should pin host memory.

Nothing in pertpyro names a device: parameters and buffers live in the modules (Lightning moves them), every tensor a
model or guide creates is derived from its inputs, parameters or buffers, and minibatches are moved by Lightning
(``non_blocking`` on CUDA). Pinned (page-locked) host memory makes those copies asynchronous, but only pays off, and
is only possible, when the accelerator is a CUDA GPU.
"""

from __future__ import annotations

import torch
from lightning.pytorch.accelerators import Accelerator, CUDAAccelerator

_CUDA_NAMES = ("gpu", "cuda")


def uses_cuda(accelerator: str | Accelerator) -> bool:
    """Whether Lightning's ``accelerator`` argument puts training on a CUDA GPU on this machine.

    ``"auto"`` picks CUDA when a CUDA GPU is available (as Lightning does); ``"gpu"``/``"cuda"`` or a
    ``CUDAAccelerator`` ask for one; anything else (``"cpu"``, ``"mps"``, ...) does not use CUDA.
    """
    if isinstance(accelerator, Accelerator):
        return isinstance(accelerator, CUDAAccelerator)
    name = str(accelerator).lower()
    if name == "auto" or name in _CUDA_NAMES:
        return torch.cuda.is_available()
    return False


def pin_memory_for(accelerator: str | Accelerator) -> bool:
    """``pin_memory`` of the training loaders: on only when the batches go to a CUDA GPU."""
    return uses_cuda(accelerator)
