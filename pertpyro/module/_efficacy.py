"""Per-cell posterior of the ``efficacy`` site: did the knockout take effect in this cell?

``efficacy`` has two values and is summed out exactly in training; its posterior given a cell's counts follows the
pattern of :func:`pertpyro.module._artifacts.artifact_posterior`: exact in the discrete states, the basal state
integrated by importance sampling with the guide as proposal (global sites at their posterior means)::

    P(e = 1 | x, l) ∝ sum_k p(e = 1, x, l, z_k) / q(z_k | x),   z_k ~ q(z | x),  k = 1..n_samples

where the sums over the other discrete per-cell states (``artifact``, ``artifact_kind``) sit inside ``p``. The
prior ``P(e = 1)`` of a cell is the response rate of its targets (``prod_t rho_t ** d_nt``); the counts and the
depth move it toward a responder where the cell looks like the fitted knockout, toward an escaper where it looks
like a control cell.
"""

from __future__ import annotations

import torch

from pertpyro.module._artifacts import guide_draw
from pertpyro.module._enumerate import cell_log_joint, enumerated_sites
from pertpyro.module._types import GuideLike
from pertpyro.module.sites import EFFICACY


def _labels_observed(program: torch.nn.Module, args: tuple) -> bool:
    """Whether the ``artifact`` site is observed in this run (the observed artifact mode with labels given)."""
    block = getattr(program, "artifact_block", None)
    return block is not None and block.mode == "observed" and len(args) > 6 and args[6] is not None


def efficacy_log_joint(program: torch.nn.Module, args: tuple, latents: dict[str, torch.Tensor]) -> torch.Tensor:
    """``log p(e, x, l, z | globals)`` per cell for ``e = 0, 1``, the other discrete states summed: ``(2, B)``."""
    sites = enumerated_sites(program, labels_observed=_labels_observed(program, args))
    joint = cell_log_joint(program, args, latents, sites).movedim(sites.index(EFFICACY), 0)
    return torch.logsumexp(joint.reshape(2, -1, joint.shape[-1]), 1)


@torch.no_grad()
def efficacy_posterior(program: torch.nn.Module, guide: GuideLike, args: tuple, *, n_samples: int = 30) -> torch.Tensor:
    """Posterior ``P(efficacy = 1 | x, library)`` of each cell of one standalone minibatch (module docstring).

    Parameters
    ----------
    program, guide
        The trained model (with the ``efficacy`` block) and its guide.
    args
        Model arguments of the cells (:func:`pertpyro.data._loader.standalone_args`).
    n_samples
        Importance samples of the basal state per cell.

    Returns
    -------
    Tensor ``(B,)``. A control cell's value is its prior, 1 (no target, nothing to escape).
    """
    if not getattr(program, "use_efficacy", False):
        raise ValueError("This model has no efficacy block (efficacy=False): every perturbed cell responds.")
    if n_samples < 1:
        raise ValueError(f"n_samples must be positive, got {n_samples}.")
    weights = []
    for _ in range(n_samples):
        draw, log_q = guide_draw(program, guide, args)
        weights.append(efficacy_log_joint(program, args, draw) - log_q)
    return torch.softmax(torch.logsumexp(torch.stack(weights), 0), 0)[1]


__all__ = ["efficacy_log_joint", "efficacy_posterior"]
