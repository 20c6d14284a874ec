"""A penalty on the dependence of the basal state on the perturbation, so that effects stay in the effect sites.

The encoder sees each cell's counts (and, by default, its targets), so it can move the basal states of a knockout's
cells away from those of control cells and let the decoder express part of the knockout's effect through them.
Queries draw basal states from control cells, so an effect held by the basal state is lost to every prediction:
the knockout is predicted weaker than it is. The penalty compares, within a minibatch, the mean basal state of each
target's cells with that of the control cells, per latent dimension in units of the minibatch's spread (so that
shrinking the basal states does not lower it), and charges each cell half the squared gaps of its targets times a
weight. Heterogeneity within a target (escapers and responders, cell states) is left to the basal state.
"""

from __future__ import annotations

import torch

SPREAD_FLOOR = 1e-3
"""Smallest per-dimension spread of the basal states that the gaps are measured in."""


def basal_dependence(z: torch.Tensor, perturbation: torch.Tensor) -> torch.Tensor:
    """Per-cell penalty: half the squared standardised gaps between its targets' mean basal state and control's.

    Parameters
    ----------
    z
        Basal states of a minibatch, ``(B, K)``.
    perturbation
        Multi-hot targets ``(B, R)``; cells with no target are the controls.

    Returns
    -------
    ``(B,)``: for each cell, ``0.5 * sum_t d_nt * ||(mean_t - mean_control) / spread||^2``; zeros when the minibatch
    has no control cell.
    """
    d = perturbation.to(z.dtype)
    control = d.sum(-1) == 0
    if not bool(control.any()) or d.shape[-1] == 0:
        return z.new_zeros(z.shape[:-1])
    spread = z.std(0, unbiased=False).clamp_min(SPREAD_FLOOR)  # (K,)
    standard = z / spread
    n_cells = d.sum(0)  # (R,)
    target_mean = (d.T @ standard) / n_cells.clamp_min(1.0).unsqueeze(-1)  # (R, K)
    control_mean = standard[control].mean(0)  # (K,)
    gap = (target_mean - control_mean).pow(2).sum(-1) * (n_cells > 0)  # (R,)
    return 0.5 * (d @ gap)
