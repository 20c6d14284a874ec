"""Small public datasets shipped with pertpyro (provenance, licences and checksums in ``files/README.md``)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import TypeVar

import anndata
import pandas as pd
from anndata import AnnData

logger = logging.getLogger(__name__)

T = TypeVar("T")

_PAPALEXI_FILE = "papalexi2021_thp1_lowmoi.h5ad"
_COLLECTRI_FILE = "collectri_human.csv"


def _read_shipped(filename: str, reader: Callable[[Path], T]) -> T:
    resource = resources.files("pertpyro.data").joinpath("files", filename)
    with resources.as_file(resource) as path:  # a real file path even if the package is zipped
        logger.debug("Reading shipped dataset %s", path)
        return reader(path)


def papalexi2021() -> AnnData:
    """THP-1 CRISPR-knockout screen of Papalexi et al. (2021), sceptre's low-MOI example data.

    An ECCITE-seq screen of immune-checkpoint regulators in THP-1 cells, as shipped (gene-downsampled) in the
    ``sceptredata`` R package: 20,729 cells x 299 genes, raw UMI counts. 25 genes were knocked out (3-4 gRNAs each);
    cells with non-targeting gRNAs are labelled ``"control"``. Each cell is assigned the gRNA with the most UMIs
    (low MOI). Nine knocked-out genes are also measured (e.g. STAT1, JAK2, IFNGR2).

    Returns
    -------
    A new in-memory AnnData on every call, with

    - ``X``: raw UMI counts, CSR ``float32`` (integer values), cells x genes; ``var_names`` are gene symbols.
    - ``obs["perturbation"]``: target gene of the assigned gRNA, or ``"control"`` (26 categories).
    - ``obs["guide"]``, ``obs["guide_target"]`` (source label, ``"non-targeting"`` for controls),
      ``obs["is_control"]``, ``obs["bio_rep"]`` (``rep_1``/``rep_2``/``rep_3``), library-size and gRNA-UMI
      columns (``n_counts``, ``n_genes``, ``grna_n_umis``, ``grna_n_nonzero``, ``guide_umis``, ``guide_frac``,
      ``guide_tied``).
    - ``var["is_perturbation_target"]``, ``var["n_cells"]``, ``var["total_counts"]``.
    - ``obsm["grna_counts"]``: cells x 110 gRNA UMI counts (column order in ``uns["grna_ids"]``);
      ``uns["grna_targets"]`` and ``uns["provenance"]``.

    Notes
    -----
    Data: Papalexi, E. et al. Characterizing the molecular regulation of inhibitory immune checkpoints with
    multimodal single-cell screens. *Nat Genet* 53, 322-331 (2021). https://doi.org/10.1038/s41588-021-00778-2.
    Converted from ``lowmoi_example_data.rda`` of the ``sceptredata`` R package (Katsevich lab, MIT licence).
    Cite Papalexi et al. (2021) when you use it; see ``pertpyro/data/files/README.md`` for the conversion.

    Examples
    --------
    >>> import pertpyro
    >>> adata = pertpyro.data.papalexi2021()
    >>> adata.shape
    (20729, 299)
    """
    return _read_shipped(_PAPALEXI_FILE, anndata.read_h5ad)


def collectri() -> pd.DataFrame:
    """CollecTRI human signed transcription-factor -> target network (Müller-Dott et al., 2023).

    The version served by decoupler/OmniPath in 2023, with TF complexes merged into ``AP1`` and ``NFKB``:
    43,178 edges, 1,186 source TFs, 6,692 targets, no duplicate (source, target) pairs. Useful as a prior or a
    reference for a learned gene-regulatory network.

    Returns
    -------
    A new DataFrame with one row per edge, sorted by source then target, and columns

    - ``source``: TF gene symbol.
    - ``target``: target gene symbol.
    - ``weight``: ``+1`` (activation) or ``-1`` (repression), ``int64``.
    - ``PMID``: semicolon-separated PubMed ids supporting the edge (strings; empty for the 185 edges without one).

    Notes
    -----
    Licence: CC BY 4.0 (CollecTRI); attribution required. Cite: Müller-Dott, S. et al. Expanding the coverage of
    regulons from high-confidence prior knowledge for accurate estimation of transcription factor activities.
    *Nucleic Acids Res* 51, 10934-10949 (2023). https://doi.org/10.1093/nar/gkad841.
    See ``pertpyro/data/files/README.md`` for provenance and checksums.

    Examples
    --------
    >>> import pertpyro
    >>> net = pertpyro.data.collectri()
    >>> list(net.columns)
    ['source', 'target', 'weight', 'PMID']
    """
    return _read_shipped(
        _COLLECTRI_FILE,
        lambda path: pd.read_csv(
            path, dtype={"source": str, "target": str, "weight": "int64", "PMID": str}, keep_default_na=False
        ),
    )
