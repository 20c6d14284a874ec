"""Neural building blocks: the amortised encoder of the basal state and the decoder to gene logits."""

from __future__ import annotations

import math
from typing import overload

import torch
from torch import nn


@overload
def inverse_softplus(x: float) -> float: ...
@overload
def inverse_softplus(x: torch.Tensor) -> torch.Tensor: ...
def inverse_softplus(x: float | torch.Tensor) -> float | torch.Tensor:
    """The ``y`` with ``softplus(y) = x`` (``x > 0``): the raw value of a parameter stored through a softplus."""
    if isinstance(x, torch.Tensor):
        return x + torch.log(-torch.expm1(-x))
    return x + math.log(-math.expm1(-x))


def _mlp(n_in: int, n_hidden: int, n_out: int, n_layers: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = n_in
    for _ in range(n_layers):
        layers += [nn.Linear(width, n_hidden), nn.LayerNorm(n_hidden), nn.ReLU()]
        width = n_hidden
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers)


class BasalEncoder(nn.Module):
    """Amortised posterior ``q(z_basal | x, batch[, perturbation])`` as a diagonal Normal.

    Inputs are log-normalised counts, a one-hot batch and optionally the cell's targets. Seeing the targets lets the
    encoder learn not to explain a knockout's effect by the basal state (which would shrink the effects).

    Parameters
    ----------
    n_genes
        Number of genes (input width).
    n_batches
        Number of batch categories (one-hot appended to the input; 0 for none).
    latent_dim
        Dimension of the basal latent state.
    n_targets
        Number of targets whose multi-hot design is appended to the input (0: the encoder does not see it).
    n_hidden
        Width of the hidden layers.
    n_layers
        Number of hidden layers.
    """

    def __init__(
        self,
        n_genes: int,
        n_batches: int,
        latent_dim: int,
        *,
        n_targets: int = 0,
        n_hidden: int = 128,
        n_layers: int = 1,
    ):
        super().__init__()
        self.n_batches, self.n_targets = n_batches, n_targets
        self.net = _mlp(n_genes + n_batches + n_targets, n_hidden, 2 * latent_dim, n_layers)

    def forward(
        self,
        counts: torch.Tensor,
        batch_index: torch.Tensor,
        perturbation: torch.Tensor | None = None,
        target_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(loc, scale)`` of ``q(z_basal)``, each ``(cells, latent_dim)``.

        ``target_index``: ``perturbation`` holds only these targets' columns (the others are 0); the first layer
        then reads only their weights.
        """
        library = counts.sum(-1, keepdim=True).clamp_min(1.0)
        inputs = torch.log1p(1e4 * counts / library)
        if self.n_batches > 1:
            inputs = torch.cat([inputs, nn.functional.one_hot(batch_index, self.n_batches).to(inputs.dtype)], -1)
        if self.n_targets and target_index is not None:
            first, n_in = self.net[0], inputs.shape[-1]
            target_weight = first.weight[:, n_in:][:, target_index]  # (hidden, P)
            hidden = nn.functional.linear(inputs, first.weight[:, :n_in], first.bias)
            hidden = hidden + perturbation.to(inputs.dtype) @ target_weight.T
            for layer in list(self.net)[1:]:
                hidden = layer(hidden)
            loc, raw_scale = hidden.chunk(2, dim=-1)
            return loc, nn.functional.softplus(raw_scale) + 1e-4
        if self.n_targets:
            inputs = torch.cat([inputs, perturbation.to(inputs.dtype)], -1)
        loc, raw_scale = self.net(inputs).chunk(2, dim=-1)
        return loc, nn.functional.softplus(raw_scale) + 1e-4


class GeneDecoder(nn.Module):
    """Basal state (and batch) to unnormalised gene logits: ``MLP(z) + gene_bias + batch_offset[b]``.

    Parameters
    ----------
    latent_dim
        Dimension of the basal latent state.
    n_genes
        Number of genes.
    n_batches
        Number of batch categories (a per-batch, per-gene offset; 0 or 1 for none).
    n_hidden
        Width of the hidden layer; ``0`` gives a linear decoder.
    gene_bias
        Initial per-gene log-proportions (e.g. log of the mean expression share).
    """

    def __init__(
        self,
        latent_dim: int,
        n_genes: int,
        n_batches: int,
        *,
        n_hidden: int = 128,
        gene_bias: torch.Tensor | None = None,
    ):
        super().__init__()
        self.net = _mlp(latent_dim, n_hidden, n_genes, 1) if n_hidden > 0 else nn.Linear(latent_dim, n_genes)
        self.gene_bias = nn.Parameter(torch.zeros(n_genes) if gene_bias is None else gene_bias.clone().float())
        self.batch_offset = nn.Parameter(torch.zeros(max(n_batches, 1), n_genes))

    def forward(self, z: torch.Tensor, batch_index: torch.Tensor) -> torch.Tensor:
        """Gene logits of shape ``z.shape[:-1] + (n_genes,)``."""
        return self.net(z) + self.gene_bias + self.batch_offset[batch_index]
