"""Keep freed memory inside the process (Linux, glibc), so that large temporaries stop costing page faults.

A training step allocates and frees the same large tensors every step (a minibatch's ``(2, B, G)`` logits under
the enumerated ``efficacy`` are 5 MB at ``B = 2048``). With glibc's default settings such blocks are mapped from the
kernel on allocation and unmapped on release (or trimmed off the top of the heap), so every step touches fresh
pages, and page faults take a large share of a CPU step (``benchmarks/throughput.py`` compares both settings). :func:`keep_freed_memory` raises glibc's mmap threshold to its maximum (32 MiB) and its
trim threshold to 256 MiB, so those blocks are reused from the heap instead. The values of the computation do not
change; the process keeps up to 256 MiB of freed memory for reuse instead of handing it back at once.

:meth:`pertpyro.PerturbationModel.train` applies it for the duration of training only
(:func:`kept_freed_memory`; glibc's default thresholds come back after); the ``pertpyro`` command applies it
process-wide, once (:func:`keep_freed_memory`).
It is skipped where it does not apply (not Linux, not glibc), when the user has set any of glibc's own
``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` / ``MALLOC_TOP_PAD_`` variables, and when
``PERTPYRO_KEEP_FREED_MEMORY=0``.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

logger = logging.getLogger("pertpyro")

_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest allowed value on 64-bit systems
TRIM_THRESHOLD = 256 * 1024 * 1024
OPT_OUT = "PERTPYRO_KEEP_FREED_MEMORY"
_GLIBC_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")

_DEFAULT_THRESHOLD = 128 * 1024  # glibc's default for both (M_MMAP_THRESHOLD and M_TRIM_THRESHOLD)

_state: dict[str, Any] = {}


def keep_freed_memory() -> bool:
    """Tune glibc's allocator for the repeated large allocations of training (once per process).

    Returns
    -------
    Whether the tuning is in effect (``False``: not Linux/glibc, opted out, or the user's own glibc settings).
    """
    if "applied" not in _state:
        _state["applied"] = _apply()
    return _state["applied"]


@contextmanager
def kept_freed_memory() -> Iterator[bool]:
    """:func:`keep_freed_memory` for the duration of the block (also a decorator); glibc's defaults after.

    Glibc's thresholds are set back to their documented defaults (128 KiB each) and the freed memory the heap kept is
    handed back to the kernel. Glibc starts with a dynamic mmap
    threshold, which any explicit setting turns off; the defaults are the closest state there is to go back to.
    Nested blocks restore once, at the end of the outermost; a process-wide :func:`keep_freed_memory` stays.

    Yields
    ------
    Whether the tuning is in effect.
    """
    if _state.get("applied"):  # the process-wide tuning (the command line) stays as it is
        yield True
        return
    depth = _state.get("depth", 0)
    applied = _apply() if depth == 0 else _state.get("scoped", False)
    _state["depth"], _state["scoped"] = depth + 1, applied
    try:
        yield applied
    finally:
        _state["depth"] -= 1
        if _state["depth"] == 0 and applied:
            _mallopt(_M_MMAP_THRESHOLD, _DEFAULT_THRESHOLD)
            _mallopt(_M_TRIM_THRESHOLD, _DEFAULT_THRESHOLD)
            _release_kept_memory()
            _state["scoped"] = False


def _release_kept_memory() -> None:
    """Hand the freed memory the heap kept back to the kernel now (glibc's ``malloc_trim``).

    Resetting the thresholds alone leaves the heap as large as training made it until some later ``free`` happens
    to trim it, so the memory kept for training would outlive the block for an unpredictable time.
    """
    ctypes.CDLL(None).malloc_trim(ctypes.c_size_t(0))


def _mallopt(parameter: int, value: int) -> bool:
    libc = ctypes.CDLL(None)
    libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return libc.mallopt(parameter, value) == 1


def _apply() -> bool:
    if os.environ.get(OPT_OUT, "1") == "0":
        return False
    if any(name in os.environ for name in _GLIBC_VARIABLES):
        return False  # the user tuned glibc already: theirs wins
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 (only glibc has it)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    done = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if done:
        logger.debug("glibc keeps freed memory up to %d bytes (mmap threshold %d)", TRIM_THRESHOLD, MMAP_THRESHOLD)
    return done
