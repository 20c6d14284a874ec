"""Importance-weighted ELBO of held-out cells (Burda et al. 2016), with ``efficacy`` summed out exactly."""

from __future__ import annotations

import math

import torch
from pyro import poutine

from pertpyro._settings import local_params
from pertpyro.data._loader import standalone_args
from pertpyro.models._program import PerturbationGuide, PerturbationProgram
from pertpyro.models._sites import COUNTS, EFFECT, EFFECT_MASK, EFFICACY, EFFICACY_RATE, LIBRARY, PERTURBATION, Z_BASAL


def _local_log_prob(trace: poutine.Trace, name: str) -> torch.Tensor:
    site = trace.nodes[name]
    return site["fn"].log_prob(site["value"])


@torch.no_grad()
def iwelbo_per_cell(
    program: PerturbationProgram, guide: PerturbationGuide, batch: dict[str, torch.Tensor], *, n_particles: int = 20
) -> torch.Tensor:
    """IWELBO of each cell of ``batch`` given the posterior mean of the global sites.

    ``log (1/K) sum_k p(x, l, d, z_k) / q(z_k | x)`` with
    ``p(x, l, d, z) = p(z) p(d) sum_e p(e | d) p(l | d, e) p(x | z, d, e, l)`` (``l``: log library size),
    where the effects are fixed at their posterior mean (mask: posterior inclusion > 1/2). A tighter bound on
    ``log p(x | globals)`` than the ELBO; higher is better.

    Returns
    -------
    Tensor ``(B,)`` in nats per cell.
    """
    n = batch["idx"].shape[0]
    args = standalone_args(batch)
    fixed = {EFFECT: guide.effect_loc.detach()}
    if program.use_efficacy:
        fixed[EFFICACY_RATE] = guide.efficacy_median().detach().unsqueeze(-1)
    if program.sparse_effects:
        fixed[EFFECT_MASK] = (guide.mask_logit.detach() > 0).float()
    efficacy_values = (0.0, 1.0) if program.use_efficacy else (None,)
    weights = []
    with local_params():
        for _ in range(n_particles):
            guide_trace = poutine.trace(guide).get_trace(*args)
            z = guide_trace.nodes[Z_BASAL]["value"]
            log_q = _local_log_prob(guide_trace, Z_BASAL)
            joint = []
            for value in efficacy_values:
                data = fixed | {Z_BASAL: z}
                if value is not None:
                    data[EFFICACY] = torch.full((n,), value)
                tr = poutine.trace(poutine.condition(program, data=data)).get_trace(*args)
                log_p = sum(_local_log_prob(tr, site) for site in (Z_BASAL, PERTURBATION, LIBRARY, COUNTS))
                if value is not None:
                    log_p = log_p + _local_log_prob(tr, EFFICACY)
                joint.append(log_p)
            weights.append(torch.logsumexp(torch.stack(joint), 0) - log_q)
    return torch.logsumexp(torch.stack(weights), 0) - math.log(n_particles)
