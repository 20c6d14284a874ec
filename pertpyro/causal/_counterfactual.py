"""The counterfactual engine: abduction (guide), action (``pyro.poutine.do``), prediction (model replay).

Interventions are given by site name and value (``{"perturbation": design, "efficacy": 1.0}``); the engine turns
them into tensors for the cells of a minibatch. Every query of pertpyro that asks "what if" goes through here.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from pyro import poutine

from pertpyro.data._loader import standalone_args
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
    EFFICACY_RATE,
    PERTURBATION,
    Z_BASAL,
)

INTERVENABLE_SITES = (PERTURBATION, EFFICACY, ARTIFACT, ADJACENCY)
"""Sites of the current model that ``do`` accepts (more arrive with the artifact and GRN blocks)."""


def abduct(guide: GuideLike, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One posterior draw of the latent sites given the cells' factual data: ``z_basal`` and the global sites."""
    trace = poutine.trace(guide).get_trace(*standalone_args(batch))
    names = (Z_BASAL, EFFICACY_RATE, EFFECT, EFFECT_MASK, ADJACENCY, ADJACENCY_WEIGHT, ARTIFACT_EMBEDDING)
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
