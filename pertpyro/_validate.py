"""Argument checks of the query methods: a clear ``ValueError`` before any work instead of a failure deep inside.

:func:`check_query_args` knows each argument by its name (the same name in every method), so a method checks
its arguments in one line: ``check_query_args(n_samples=n_samples, seed=seed)``.
"""

from __future__ import annotations

import numbers
from typing import Any


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _positive_int(name: str, value: Any) -> None:
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")


def _optional_positive_int(name: str, value: Any) -> None:
    if value is not None and (not _is_int(value) or value < 1):
        raise ValueError(f"{name} must be a positive integer or None (no limit), got {value!r}.")


def _seed(name: str, value: Any) -> None:
    if not _is_int(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}.")


def _open_unit(name: str, value: Any) -> None:
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not 0 < value < 1:
        raise ValueError(f"{name} must lie strictly between 0 and 1, got {value!r}.")


_RULES = {
    "n_samples": _positive_int,
    "n_replicas": _positive_int,
    "batch_size": _positive_int,
    "max_cells": _optional_positive_int,
    "seed": _seed,
    "ci": _open_unit,
}


def check_query_args(**arguments: Any) -> None:
    """Raise ``ValueError`` naming the first argument out of its domain.

    ``n_samples``, ``n_replicas``, ``batch_size``: positive integers;
    ``max_cells``: a positive integer or ``None``; ``seed``: a non-negative integer; ``ci``: in (0, 1).
    """
    for name, value in arguments.items():
        _RULES[name](name, value)
