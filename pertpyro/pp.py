"""Preprocessing: QC metrics and technical-artifact labels (``pertpyro.pp.qc``)."""

from pertpyro.data._qc import qc

__all__ = ["qc"]
