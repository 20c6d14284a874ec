"""Process-wide helpers: seeding and Pyro's module-local parameter mode."""

from __future__ import annotations

import functools
import inspect
import logging
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import numpy as np
import pyro
import torch

logger = logging.getLogger("pertpyro")
T = TypeVar("T")


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
    """Seed Python's ``random``, NumPy's global RNG, torch (CPU and CUDA) and so Pyro for the block only.

    On exit all of them are back in the states they had before, so a query with ``seed=`` gives the same draws
    every time without changing the random numbers the caller's own code draws next.
    """
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}.")
    python_state = random.getstate()
    numpy_state = np.random.get_state()  # noqa: NPY002 (the global state is what must come back)
    try:
        with torch.random.fork_rng():  # torch's CPU state and every initialised CUDA device's
            pyro.set_rng_seed(seed)  # seeds random, numpy and torch
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)  # noqa: NPY002


def seeded_by_argument(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorator: run ``fn`` inside :func:`seeded` with its own ``seed`` argument (global states restored after)."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        with seeded(bound.arguments["seed"]):
            return fn(*args, **kwargs)

    return wrapper


@contextmanager
def local_params() -> Iterator[None]:
    """Run Pyro with parameters kept in module state, never in the global param store.

    The user's global Pyro setting is restored on exit, so two pertpyro models (or a pertpyro model and the
    user's own Pyro code) in one process never share parameters.
    """
    with pyro.settings.context(module_local_params=True):
        yield
