"""The targets a minibatch holds and the probability that a random minibatch holds each of them.

A training step on a screen with many targets need only read and update the effects of the targets its cells
carry. The global sites of the other targets still belong to the ELBO: the step counts each present target's
terms divided by the probability that a minibatch holds it (a Horvitz-Thompson estimate), so the step's loss is an
unbiased estimate of the full ELBO, KL of every target included.

The minibatches of :func:`pertpyro.data._loader.make_loader` (``shuffle=True``, ``block_size=1``) are, each on its
own, uniformly random subsets of the training cells of their size, so a minibatch of ``b`` cells out of ``N``
misses a target carried by ``n_t`` cells with the hypergeometric probability ``C(N - n_t, b) / C(N, b)``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class TargetSubsample(NamedTuple):
    """The targets present in a minibatch and the weights of their global terms.

    Attributes
    ----------
    rows
        Sorted indices of the targets carried by at least one cell of the minibatch, ``(P,)``.
    weight
        ``1 / P(a random minibatch of this size holds the target)`` for each of them, ``(P,)``.
    """

    rows: torch.Tensor
    weight: torch.Tensor


def inclusion_probability(target_cells: torch.Tensor, n_cells: int, batch_size: int) -> torch.Tensor:
    """Probability that a uniformly random subset of ``batch_size`` of ``n_cells`` cells holds each target.

    Parameters
    ----------
    target_cells
        Number of cells carrying each target, ``(P,)``.
    n_cells
        Number of cells sampled from.
    batch_size
        Cells per minibatch.

    Returns
    -------
    ``1 - C(n_cells - n_t, b) / C(n_cells, b)`` per target (1 where every minibatch must hold it).
    """
    n_t = target_cells.to(torch.float64)
    rest = n_cells - n_t
    log_miss = (
        torch.lgamma(rest + 1.0)
        - torch.lgamma((rest - batch_size).clamp_min(0.0) + 1.0)
        - torch.lgamma(torch.tensor(n_cells + 1.0, dtype=torch.float64))
        + torch.lgamma(torch.tensor(n_cells - batch_size + 1.0, dtype=torch.float64))
    )
    miss = torch.where(rest >= batch_size, log_miss.exp(), torch.zeros_like(n_t))
    return (1.0 - miss).clamp_min(1e-12)


def present_targets(perturbation: torch.Tensor, target_cells: torch.Tensor, n_cells: int) -> TargetSubsample:
    """The targets of a minibatch and the inverse probabilities that a minibatch of its size holds them.

    Parameters
    ----------
    perturbation
        Multi-hot designs of the minibatch's cells, ``(B, T)``.
    target_cells
        Number of the ``n_cells`` sampled cells that carry each target, ``(T,)``.
    n_cells
        Number of cells the minibatch was drawn from.
    """
    rows = perturbation.any(0).nonzero().squeeze(-1)
    probability = inclusion_probability(target_cells[rows], n_cells, perturbation.shape[0])
    return TargetSubsample(rows, probability.reciprocal().to(torch.float32))
