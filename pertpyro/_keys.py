"""Names of every key pertpyro writes into an AnnData (prefix ``pertpyro``)."""

REGISTRY_KEY = "pertpyro"
"""``adata.uns`` entry holding the registry written by :func:`pertpyro.setup_anndata`."""

TRUTH_KEY = "truth"
"""``adata.uns`` entry where :func:`pertpyro.datasets.simulate` stores the ground truth."""

ARTIFACT_KEY = "artifact"
ARTIFACT_REASON_KEY = "artifact_reason"
DOUBLET_SCORE_KEY = "doublet_score"
ARTIFACT_PROB_KEY = "pertpyro_artifact_prob"
Z_BASAL_KEY = "X_pertpyro_z_basal"
GRN_KEY = "pertpyro_grn"
NEGATIVE_CONTROLS_KEY = "pertpyro_negative_controls"
"""``adata.uns`` entry naming the null pseudo-targets written by :func:`pertpyro.data.add_negative_controls`."""
