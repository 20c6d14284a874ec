"""The counterfactual engine: abduction (guide), action (``pyro.poutine.do``), prediction (model replay).

Interventions are given by site name and value (``{"perturbation": design, "efficacy": 1.0}``); the engine turns
them into tensors for the cells of a minibatch. Every query of pertpyro that asks "what if" goes through here.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from pyro import poutine

from pertpyro.causal._artifacts import abduct_artifact
from pertpyro.causal._expected import arm_distribution
from pertpyro.data._loader import CellData, standalone_args
from pertpyro.module._program import PerturbationProgram
from pertpyro.module._types import GuideLike
from pertpyro.module.sites import (
    ADJACENCY,
    ADJACENCY_WEIGHT,
    ARTIFACT,
    ARTIFACT_EMBEDDING,
    EFFECT,
    EFFECT_MASK,
    EFFICACY,
    EFFICACY_GUIDE_RATE,
    EFFICACY_RATE,
    LATENT_EFFECT,
    PERTURBATION,
    Z_BASAL,
)

INTERVENABLE_SITES = (PERTURBATION, EFFICACY, ARTIFACT, ADJACENCY)
"""Sites of the current model that ``do`` accepts (more arrive with the artifact and GRN blocks)."""


def abduct(guide: GuideLike, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One posterior draw of the latent sites given the cells' factual data: ``z_basal`` and the global sites."""
    trace = poutine.trace(guide).get_trace(*standalone_args(batch))
    names = (
        Z_BASAL,
        EFFICACY_RATE,
        EFFICACY_GUIDE_RATE,
        EFFECT,
        EFFECT_MASK,
        LATENT_EFFECT,
        ADJACENCY,
        ADJACENCY_WEIGHT,
        ARTIFACT_EMBEDDING,
    )
    return {name: torch.as_tensor(trace.nodes[name]["value"]) for name in names if name in trace.nodes}


def intervene(
    program: PerturbationProgram,
    latents: dict[str, torch.Tensor],
    batch: dict[str, torch.Tensor],
    action: Mapping[str, torch.Tensor],
) -> torch.Tensor:
    """Counts of the cells of ``batch`` under ``poutine.do(action)``, given the abducted ``latents``.

    Parameters
    ----------
    program
        The model.
    latents
        Values of latent sites from :func:`abduct` (held fixed: the cells keep their basal states).
    batch
        The cells' factual data (the factual perturbation and depth enter the model as observed).
    action
        Site name to intervened value, each broadcastable to the site's shape for these cells.

    Returns
    -------
    Simulated counts ``(cells, genes)``.
    """
    unknown = sorted(set(action) - set(INTERVENABLE_SITES))
    if unknown:
        raise ValueError(f"Cannot intervene on {unknown}: this model's intervenable sites are {INTERVENABLE_SITES}.")
    args = standalone_args(batch)
    conditioned = poutine.condition(program, data=latents)
    return poutine.do(conditioned, data=dict(action))(None, *args[1:])


def _mean_counts(
    program: PerturbationProgram,
    latents: dict[str, torch.Tensor],
    batch: dict[str, torch.Tensor],
    action: Mapping[str, torch.Tensor],
) -> torch.Tensor:
    """Expected counts ``(cells, G)`` under ``action`` for one posterior draw, the cells' response summed out."""
    n = batch["counts"].shape[0]
    responders, _, p = arm_distribution(program, latents, batch, {**action, EFFICACY: torch.ones(n)})
    if p is None:  # no efficacy block: every cell responds
        return responders
    escapers = arm_distribution(program, latents, batch, {**action, EFFICACY: torch.zeros(n)})[0]
    return p.unsqueeze(-1) * responders + (1.0 - p.unsqueeze(-1)) * escapers


@torch.no_grad()
def predict_counts(
    program: PerturbationProgram,
    guide: GuideLike,
    data: CellData,
    designs: torch.Tensor,
    *,
    expected: bool = False,
    n_samples: int = 1,
    batch_size: int = 512,
) -> torch.Tensor:
    """Counts of the cells of ``data``, each under its own perturbation, from the posterior predictive.

    Abduction (each cell's basal state and, with the artifact block, its artifact state, from the guide given its
    observed counts), action (``poutine.do`` sets each cell's ``perturbation`` row of ``designs``), prediction (the
    model's counts at the cell's own depth). The cells go through in chunks of ``batch_size``; each chunk takes its
    own draw of the global sites (effects, response rates, ...), so a cell's counts follow the posterior
    predictive and cells of one chunk share that draw. Seed the caller's RNG for reproducible draws.

    Parameters
    ----------
    program
        The model.
    guide
        Its guide.
    data
        The cells whose basal states are kept (e.g. control cells).
    designs
        Multi-hot perturbation per cell ``(cells, T)``: every row is predicted in one pass.
    expected
        ``False``: one sampled count vector per cell (integers; efficacy drawn per cell). ``True``: the negative
        binomial mean, response summed out, averaged over ``n_samples`` posterior draws.
    n_samples
        Posterior draws averaged when ``expected``; sampled counts take one draw (``n_samples`` must be 1).
    batch_size
        Cells per chunk.

    Returns
    -------
    Tensor ``(cells, G)``.
    """
    if designs.shape != (len(data), program.n_targets):
        raise ValueError(f"designs must be (cells, targets) = {(len(data), program.n_targets)}, got {designs.shape}.")
    if not expected and n_samples != 1:
        raise ValueError(f"Sampled counts take one posterior draw per cell; got n_samples={n_samples}.")
    out = torch.zeros(len(data), program.n_genes)
    for start in range(0, len(data), batch_size):
        rows = np.arange(start, min(start + batch_size, len(data)))
        batch = data[rows] | {"idx": torch.arange(len(rows))}
        action = {PERTURBATION: designs[rows]}
        for _ in range(n_samples):
            latents, world = abduct(guide, batch), batch
            if program.artifact_block is not None:  # keep each cell's factual artifact state
                latents, world = abduct_artifact(program, guide, batch, latents, action)
            if expected:
                out[rows] += _mean_counts(program, latents, world, action) / n_samples
            else:
                out[rows] = intervene(program, latents, world, action)
    return out
