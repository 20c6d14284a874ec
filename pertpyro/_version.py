"""The installed version of pertpyro (from the package metadata, written once in pyproject.toml)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pertpyro")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
