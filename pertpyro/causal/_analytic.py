"""Expected log-normalised expression of a population under interventions, with the count noise taken analytically.

The simulation engine (:mod:`pertpyro.causal._expected`) averages ``log1p(1e4 x / sum x)`` over simulated counts.
Here the expectation over the negative binomial count noise is computed per cell and gene instead, with the total
``sum x`` taken at its expectation (the cell's depth: a sum over thousands of genes varies little):

``E[log1p(s x)]`` for ``x ~ NB(mean, theta)`` and ``s = 1e4 / sum_g mean_g`` is a one-dimensional integral of the
negative binomial's probability generating function (:func:`expected_log1p`), computed by a fixed quadrature: no
approximation of the count distribution, low and high means alike.

Every label is evaluated for every population cell in one model trace per chunk of labels (the population is
repeated once per label of the chunk), so the cost per label is a few vectorised passes over ``cells x genes``, and
efficacy is summed out exactly as in the simulation engine.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from pertpyro.causal._expected import arm_distribution
from pertpyro.data._statistics import TARGET_SUM
from pertpyro.module._program import PerturbationProgram
from pertpyro.module._targets import TargetSubsample
from pertpyro.module.sites import (
    ARTIFACT_LOCAL_SITES,
    EFFECT,
    EFFECT_MASK,
    EFFICACY,
    EFFICACY_RATE,
    LATENT_EFFECT,
    LOCAL_SITES,
    PERTURBATION,
)

TARGET_SITES = (EFFECT, EFFECT_MASK, EFFICACY_RATE, LATENT_EFFECT)
"""Global sites with one row per target."""

QUADRATURE_STEP = 1.0
"""Step of the trapezoid rule in ``u = log t`` of the integral in :func:`expected_log1p`."""
QUADRATURE_RANGE = (-22.0, 3.7)
"""Range of ``u = log t`` covered (beyond it the integrand is below ~1e-5 for ``scale * mean < 1e5``)."""

CHUNK_ELEMENTS = 2**22
"""Labels x cells x genes evaluated at once (memory of one chunk: a few tensors of this many floats)."""


def _nodes() -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes ``t_j`` and weights ``h exp(-t_j)`` of the trapezoid rule in ``u = log t``."""
    lo, hi = QUADRATURE_RANGE
    u = torch.arange(lo, hi + 1e-9, QUADRATURE_STEP, dtype=torch.float64)
    t = u.exp()
    return t, QUADRATURE_STEP * torch.exp(-t)


def expected_log1p(mean: torch.Tensor, theta: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``E[log1p(scale * x)]`` for ``x ~ NB(mean, theta)`` (``Var = mean + mean^2 / theta``), elementwise.

    From ``log(1 + a) = int_0^inf (exp(-t) - exp(-t (1 + a))) / t dt`` and the negative binomial's probability
    generating function ``E[z^x] = (1 + mean (1 - z) / theta)^(-theta)``::

        E[log1p(s x)] = int_0^inf exp(-t) (1 - (1 + mean (1 - exp(-s t)) / theta)^(-theta)) dt / t,

    a smooth integral in ``u = log t`` that the trapezoid rule with unit step computes to ~1e-4 (26 nodes; exact
    for every mean and dispersion, the low counts included). Cost: one ``log1p`` and one ``expm1`` per node and
    element.

    Parameters
    ----------
    mean
        Negative binomial means.
    theta
        Inverse dispersions (broadcastable to ``mean``).
    scale
        Multiplier of the counts (broadcastable to ``mean``), e.g. ``1e4 / depth``.
    """
    t, weight = _nodes()
    ratio = mean / theta
    shape = torch.broadcast_shapes(mean.shape, scale.shape)
    out = torch.zeros(shape, dtype=mean.dtype)
    differentiable = torch.is_grad_enabled() and any(x.requires_grad for x in (mean, theta, scale))
    term = None if differentiable else torch.empty(shape, dtype=mean.dtype)  # in place: no gradients needed
    for t_j, w_j in zip(t.tolist(), weight.tolist(), strict=True):
        z = -torch.expm1(-scale * t_j)  # 1 - exp(-s t), per cell
        if term is None:
            out = out - w_j * torch.expm1(-theta * torch.log1p(ratio * z))
            continue
        torch.mul(ratio, z, out=term)
        term.log1p_().mul_(-theta).expm1_()  # pgf - 1
        out.sub_(term, alpha=w_j)
    return out


def expected_log_normalised(mean: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Expected ``log1p(1e4 x / sum x)`` per cell and gene of NB counts with ``mean`` ``(..., cells, G)``."""
    scale = TARGET_SUM / mean.sum(-1, keepdim=True)
    return expected_log1p(mean, theta, scale)


def _repeat_cells(values: Mapping[str, torch.Tensor], n_cells: int, times: int) -> dict[str, torch.Tensor]:
    """Per-cell values repeated ``times`` along the cells (label-major); global values unchanged."""
    local = set(LOCAL_SITES) | set(ARTIFACT_LOCAL_SITES)
    out = {}
    for name, value in values.items():
        per_cell = name in local and torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == n_cells
        out[name] = value.repeat(times, *([1] * (value.dim() - 1))) if per_cell else value
    return out


def analytic_label_means(
    program: PerturbationProgram,
    latents: dict[str, torch.Tensor],
    population: dict[str, torch.Tensor],
    designs: torch.Tensor,
    extra: Mapping[str, torch.Tensor],
    *,
    responders: bool = False,
    escaper_arms: bool = False,
    weights: torch.Tensor | None = None,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> torch.Tensor:
    """Population mean of the expected log-normalised expression under each design, for one posterior draw.

    Parameters
    ----------
    program
        The model.
    latents
        One draw of the latent sites (:func:`pertpyro.causal._counterfactual.abduct`).
    population
        The cells' factual data.
    designs
        Multi-hot interventions ``(L, T)``.
    extra
        Further interventions applied in every arm (per-cell ones have the population's cells first).
    responders
        Set ``efficacy = 1`` (the effect among responders) instead of summing over the response.
    escaper_arms
        Whether escapers (``efficacy = 0``) need arms of their own; ``False``: they are the control arm
        (:func:`pertpyro.causal._expected.escapers_are_controls`).
    weights
        Optional ``(..., L, cells)`` weights of the cells in each label's mean (uniform when ``None``).
    chunk_elements
        Labels x cells x genes evaluated at once.

    Returns
    -------
    Tensor ``(L, G)`` (``(..., L, G)`` with weights of more dimensions).
    """
    n = population["idx"].shape[0]
    n_labels, n_genes = designs.shape[0], population["counts"].shape[1]
    zeros_design = torch.zeros_like(designs[0]).expand(n, -1)
    control_mean, control_theta, _ = arm_distribution(
        program, latents, population, {PERTURBATION: zeros_design, **extra}
    )
    control = expected_log_normalised(control_mean, control_theta)  # (cells, G)
    sets = () if weights is None else tuple(weights.shape[:-2])
    out = torch.empty(*sets, n_labels, n_genes)
    chunk = max(1, chunk_elements // max(n * n_genes, 1))
    # programs that can read a subset of the targets' rows (not the grn block, whose effects mix all targets)
    rows_only = getattr(program, "grn", True) is None and designs.shape[1] > chunk
    for start in range(0, n_labels, chunk):
        block = designs[start : start + chunk]
        size = block.shape[0]
        cells = {key: value.repeat(size, *([1] * (value.dim() - 1))) for key, value in population.items()}
        cells["idx"] = torch.arange(size * n)
        repeated_latents = _repeat_cells(latents, n, size)
        repeated_extra = _repeat_cells(extra, n, size)
        targets = None
        if rows_only:  # only the rows of the chunk's targets (and the population's own): d @ effect stays small
            index = (block.any(0) | population["perturbation"].any(0)).nonzero().squeeze(-1)
            targets = TargetSubsample(index, torch.ones(index.shape[0]))
            repeated_latents = {
                name: value[index] if name in TARGET_SITES else value for name, value in repeated_latents.items()
            }
            block = block[:, index]
        action = {PERTURBATION: block.repeat_interleave(n, 0), **repeated_extra}
        action[EFFICACY] = torch.ones(size * n)  # responders; p below: their probability
        mean, theta, p = arm_distribution(program, repeated_latents, cells, action, targets)
        values = expected_log_normalised(mean, theta).reshape(size, n, n_genes)
        if p is not None and not responders:
            p = p.reshape(size, n, 1)
            if escaper_arms:
                action[EFFICACY] = torch.zeros(size * n)
                escaper_mean, escaper_theta, _ = arm_distribution(program, repeated_latents, cells, action, targets)
                escaper = expected_log_normalised(escaper_mean, escaper_theta).reshape(size, n, n_genes)
            else:
                escaper = control
            values = p * values + (1.0 - p) * escaper
        if weights is None:
            out[..., start : start + size, :] = values.mean(1)
        else:
            w = weights[..., start : start + size, :]
            out[..., start : start + size, :] = torch.einsum("...lc,lcg->...lg", w, values) / w.sum(-1, keepdim=True)
    return out
