"""Names of the model's sample sites: part of the public API (``poutine.do``, ``condition``, ``Predictive``)."""

Z_BASAL = "z_basal"
"""Per-cell basal latent state, shape ``(cells, latent_dim)``."""
PERTURBATION = "perturbation"
"""Per-cell multi-hot target design, observed, shape ``(cells, targets)``."""
EFFICACY = "efficacy"
"""Per-cell indicator that the knockout took effect, enumerated during training, shape ``(cells,)``."""
EFFECT = "effect"
"""Per-target effect on the decoder's gene logits, shape ``(targets, genes)``."""
EFFECT_MASK = "effect_mask"
"""Per-target, per-gene inclusion of the effect (spike-and-slab), shape ``(targets, genes)``."""
LIBRARY = "library"
"""Per-cell log total counts, observed, shape ``(cells,)``; a knockout may shift it (``library_effect``)."""
ARTIFACT = "artifact"
"""Per-cell technical-artifact indicator (doublet, low-quality cell), observed or enumerated, shape ``(cells,)``."""
ARTIFACT_KIND = "artifact_kind"
"""Per-cell kind of artifact (two learned kinds, e.g. doublet-like and low-quality-like), enumerated, ``(cells,)``."""
ARTIFACT_LABEL = "artifact_label"
"""Per-cell given (noisy) artifact label, observed in the latent artifact mode, shape ``(cells,)``."""
ARTIFACT_EMBEDDING = "artifact_embedding"
"""Global offsets of the two artifact kinds on the gene logits, shape ``(2, genes)``."""
COUNTS = "x"
"""Observed UMI counts, shape ``(cells, genes)``."""

CELLS_PLATE = "cells"
TARGETS_PLATE = "targets"
GENES_PLATE = "genes"

LOCAL_SITES = (Z_BASAL, PERTURBATION, EFFICACY, LIBRARY, COUNTS)
"""Sites inside the ``cells`` plate (scaled by ``n_cells / batch_size`` under subsampling)."""
GLOBAL_SITES = (EFFECT, EFFECT_MASK)
"""Sites outside the ``cells`` plate (counted once per step)."""
ARTIFACT_LOCAL_SITES = (ARTIFACT, ARTIFACT_KIND, ARTIFACT_LABEL)
"""Local sites of the artifact block (``artifact_label`` only in the latent mode with labels)."""
ARTIFACT_GLOBAL_SITES = (ARTIFACT_EMBEDDING,)
"""Global site of the artifact block."""
