"""Abduction of each cell's factual artifact state, and its counterfactual depth under ``do(artifact=...)``."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from pertpyro._settings import local_params, seeded
from pertpyro.data._loader import CellData, standalone_args
from pertpyro.module._artifacts import ArtifactKind, artifact_posterior
from pertpyro.module._program import PerturbationProgram
from pertpyro.module._types import GuideLike
from pertpyro.module.sites import ARTIFACT


def abduct_artifact(
    program: PerturbationProgram,
    guide: GuideLike,
    batch: dict[str, torch.Tensor],
    latents: dict[str, torch.Tensor],
    action: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Abduct each cell's factual artifact state and, under ``do(artifact=...)``, its counterfactual depth.

    The factual state is the label in the observed mode (when the cells carry labels), else a draw from its exact
    posterior given ``latents``. It joins ``latents`` (so the model replays it where not intervened on); when
    ``action`` sets ``artifact``, ``batch["library"]`` is replaced by the depth the cell would have had
    (:meth:`ArtifactBlock.counterfactual_log_library`).

    Returns
    -------
    The latents with ``artifact`` added, and the batch to run the intervened model on.
    """
    block = program.artifact_block
    if block is None:
        raise ValueError("This model has no artifact block: build it with artifacts='observed' or 'latent'.")
    if block.mode == "observed" and "artifact" in batch:
        factual = batch["artifact"]
    else:
        prob = artifact_posterior(program, guide, standalone_args(batch), latents=latents)
        factual = torch.bernoulli(prob)
    latents = latents | {ARTIFACT: factual}
    if ARTIFACT not in action:
        return latents, batch
    codes = batch["batch_index"]
    loc = program.library_loc[codes].detach()
    scale = nn.functional.softplus(program.library_raw_scale[codes].detach()) + 1e-3
    log_depth = block.counterfactual_log_library(
        torch.log(batch["library"]), loc, scale, factual, action[ARTIFACT].expand_as(factual)
    )
    return latents, batch | {"library": torch.exp(log_depth).detach()}


@torch.no_grad()
def artifact_probabilities(
    program: PerturbationProgram,
    guide: GuideLike,
    data: CellData,
    *,
    n_samples: int = 30,
    batch_size: int = 2048,
    seed: int = 0,
    kind: ArtifactKind = "any",
) -> np.ndarray:
    """``P(artifact = 1 | x, library, label)`` of every cell of ``data``, chunk by chunk (:func:`artifact_posterior`).

    ``kind``: an artifact of either kind (``"any"``), or of one kind (``"doublet"``, ``"low_quality"``).
    """
    out = np.zeros(len(data), dtype=np.float64)
    with seeded(seed), local_params():
        for start in range(0, len(data), batch_size):
            rows = np.arange(start, min(start + batch_size, len(data)))
            args = standalone_args(data[rows])
            out[rows] = artifact_posterior(program, guide, args, n_samples=n_samples, kind=kind).numpy()
    return out


__all__ = ["abduct_artifact", "artifact_probabilities"]
