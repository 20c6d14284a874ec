"""Process-wide helpers: seeding and Pyro's module-local parameter mode."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pyro
import torch

logger = logging.getLogger("pertpyro")


def set_seed(seed: int) -> None:
    """Seed Python, NumPy, torch and Pyro in one call.

    Parameters
    ----------
    seed
        Non-negative integer seed.
    """
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}.")
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (users' legacy numpy code reads the global state)
    pyro.set_rng_seed(seed)
    torch.manual_seed(seed)


@contextmanager
def local_params() -> Iterator[None]:
    """Run Pyro with parameters kept in module state, never in the global param store.

    The user's global Pyro setting is restored on exit, so two pertpyro models (or a pertpyro model and the
    user's own Pyro code) in one process never share parameters.
    """
    with pyro.settings.context(module_local_params=True):
        yield
