"""Importance-weighted ELBO of held-out cells (Burda et al. 2016), discrete per-cell states summed out exactly."""

from __future__ import annotations

import math

import torch

from pertpyro._settings import local_params
from pertpyro.data._loader import standalone_args
from pertpyro.module._artifacts import guide_draw
from pertpyro.module._enumerate import cell_log_joint, enumerated_sites
from pertpyro.module._program import PerturbationGuide, PerturbationProgram


@torch.no_grad()
def iwelbo_per_cell(
    program: PerturbationProgram, guide: PerturbationGuide, batch: dict[str, torch.Tensor], *, n_samples: int = 20
) -> torch.Tensor:
    """IWELBO of each cell of ``batch`` given the posterior mean of the global sites.

    ``log (1/K) sum_k p(x, l, d, z_k) / q(z_k | x)`` with
    ``p(x, l, d, z) = p(z) p(d) sum_s p(s | d) p(l | d, s) p(x | z, d, s, l)`` (``l``: log library size), where
    ``s`` runs over the discrete per-cell states, all summed exactly: ``efficacy`` and, with the artifact block,
    ``artifact`` and ``artifact_kind`` (and the given label's ``p(label | artifact)`` in the latent mode; in the
    observed mode with labels, ``artifact`` is fixed at the label and ``p(artifact = label)`` enters instead).
    The effects are fixed at their posterior mean (mask: posterior inclusion > 1/2), as is ``artifact_embedding``.
    A tighter bound on ``log p(x | globals)`` than the ELBO; higher is better.

    Returns
    -------
    Tensor ``(B,)`` in nats per cell.
    """
    args = standalone_args(batch)
    sites = enumerated_sites(program, labels_observed=args.artifact is not None)
    weights = []
    with local_params():
        for _ in range(n_samples):
            latents, log_q = guide_draw(program, guide, args)  # globals at their posterior means
            joint = cell_log_joint(program, args, latents, sites)  # (2, ..., 2, B)
            log_p = torch.logsumexp(joint.reshape(-1, joint.shape[-1]), 0) if sites else joint
            weights.append(log_p - log_q)
    return torch.logsumexp(torch.stack(weights), 0) - math.log(n_samples)
