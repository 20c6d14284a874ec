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
COUNTS = "x"
"""Observed UMI counts, shape ``(cells, genes)``."""

CELLS_PLATE = "cells"
TARGETS_PLATE = "targets"
GENES_PLATE = "genes"

LOCAL_SITES = (Z_BASAL, PERTURBATION, EFFICACY, LIBRARY, COUNTS)
"""Sites inside the ``cells`` plate (scaled by ``n_cells / batch_size`` under subsampling)."""
GLOBAL_SITES = (EFFECT, EFFECT_MASK)
"""Sites outside the ``cells`` plate (counted once per step)."""
