"""``pertpyro.evaluate``: the public face of :mod:`pertpyro.evaluation` (splits, metrics, baselines, runner)."""

from pertpyro.evaluation import *  # noqa: F403
from pertpyro.evaluation import __all__  # noqa: F401
