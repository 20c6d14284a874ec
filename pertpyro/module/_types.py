"""Type aliases shared by the program's modules."""

from collections.abc import Callable
from typing import Any

GuideLike = Callable[..., Any]
"""A guide: :class:`~pertpyro.module.PerturbationGuide`, or a handler around one (``poutine.condition(guide, ...)``)."""
