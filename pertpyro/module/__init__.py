"""The Pyro program: model and guide over tensors, their blocks, distributions and sample-site names.

Nothing here reads an AnnData or knows the user class; :mod:`pertpyro.module.sites` names every sample site (the
names ``poutine.do``, ``condition`` and ``Predictive`` address).
"""

from pertpyro.module import sites
from pertpyro.module._artifacts import ArtifactBlock, ArtifactGuide, artifact_posterior
from pertpyro.module._grn import GRNGuide, GRNPrior
from pertpyro.module._program import PerturbationGuide, PerturbationProgram

__all__ = [
    "ArtifactBlock",
    "ArtifactGuide",
    "GRNGuide",
    "GRNPrior",
    "PerturbationGuide",
    "PerturbationProgram",
    "artifact_posterior",
    "sites",
]
