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
def seeded(seed: int) -> Iterator[None]:
    """Seed Python, NumPy, torch and Pyro for the block, then restore the caller's generator states.

    Queries with a ``seed`` argument run inside it, so they are reproducible and leave the user's global random
    streams exactly where they were.
    """
    python_state, numpy_state = random.getstate(), np.random.get_state()  # noqa: NPY002
    with torch.random.fork_rng():
        pyro.set_rng_seed(seed)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)  # noqa: NPY002


@contextmanager
def local_params() -> Iterator[None]:
    """Run Pyro with parameters kept in module state, never in the global param store.

    The user's global Pyro setting is restored on exit, so two pertpyro models (or a pertpyro model and the
    user's own Pyro code) in one process never share parameters.
    """
    with pyro.settings.context(module_local_params=True):
        yield
