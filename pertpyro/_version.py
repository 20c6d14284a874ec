"""The package version, read once from the installed distribution's metadata (``pyproject.toml``)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pertpyro")
except PackageNotFoundError:  # imported from a source tree that is not installed
    __version__ = "0+unknown"
