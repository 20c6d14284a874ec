"""Preprocessing: QC metrics and technical-artifact labels (``pertpyro.pp.qc``), null pseudo-targets."""

from pertpyro.data._controls import add_negative_controls
from pertpyro.data._qc import qc

__all__ = ["add_negative_controls", "qc"]
