"""Expected log-normalised expression of a population under interventions, with little Monte-Carlo noise.

An average treatment effect is a population quantity: the difference of the *expected* ``log1p(1e4 x / sum x)``
between two arms, over the count noise and over which cells respond. Simulating one count vector per cell and
arm, with the efficacy drawn per cell, adds Monte-Carlo noise of the finite population to every posterior draw of
the shift (often most of the spread of a draw), which widens the intervals of null effects and hides
the posterior uncertainty. This module removes it, in the way the simulator defines its true shifts
(:func:`pertpyro.data._simulate._true_shifts`):

- **efficacy is summed out exactly**: the intent-to-treat mean of a cell is
  ``p * E[responder arm] + (1 - p) * E[escaper arm]`` with ``p`` the model's response probability of the cell
  (read from the ``efficacy`` site's distribution under the intervention), instead of one Bernoulli draw;
- **counts are coupled across arms** (common random numbers, exact in distribution per arm): every cell draws
  ``n_counts`` gamma rates ``lam`` and control counts ``x ~ Poisson(lam)`` once; under an arm whose negative
  binomial means are ``r`` times the control ones, its rates are ``lam * r`` (a gamma scales) and its counts
  ``Binomial(x, r)`` where ``r < 1`` (thinning) or ``x + Poisson(lam (r - 1))`` where ``r > 1`` (superposition).
  Noise common to both arms cancels in the shift; ``n_counts`` replicates per cell average the rest.

The arms' means come from the model itself, traced under ``poutine.do`` (the counts site's distribution), so every
block of the model (library effect, network, ...) acts as in :func:`pertpyro.causal._counterfactual.intervene`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from pyro import poutine

from pertpyro.data._loader import standalone_args
from pertpyro.data._statistics import log_normalise
from pertpyro.module._program import PerturbationProgram
from pertpyro.module._targets import TargetSubsample
from pertpyro.module.sites import COUNTS, EFFICACY, PERTURBATION

N_COUNTS = 4
"""Default count replicates per cell and posterior draw."""
ESCAPER_CHECK_DESIGNS = 4
"""Designs on which :func:`escapers_are_controls` checks the program (one trace each)."""


def expected_cell_values(
    program: PerturbationProgram,
    latents: dict[str, torch.Tensor],
    population: dict[str, torch.Tensor],
    designs: torch.Tensor,
    extra: Mapping[str, torch.Tensor],
    *,
    responders: bool = False,
    n_counts: int = N_COUNTS,
    escaper_arms: bool | None = None,
) -> torch.Tensor:
    """Expected log-normalised expression of each population cell under each design, for one posterior draw.

    Parameters
    ----------
    program
        The model.
    latents
        One draw of the latent sites (:func:`pertpyro.causal._counterfactual.abduct`).
    population
        The cells' factual data.
    designs
        Multi-hot interventions ``(L, T)``; every row is coupled to a control arm (all zeros).
    extra
        Further interventions applied in every arm (e.g. network edges).
    responders
        Set ``efficacy = 1`` (the effect among responders) instead of summing over the response.
    n_counts
        Count replicates per cell.
    escaper_arms
        Whether escapers (``efficacy = 0``) need arms of their own: ``None`` or ``True`` traces them and compares
        with the control arm (one more model trace per design); ``False`` takes them to be the control arm, as
        :func:`escapers_are_controls` found once for the program (saves that trace per draw).

    Returns
    -------
    Tensor ``(L, cells, G)``.
    """
    if n_counts < 1:
        raise ValueError(f"n_counts must be positive, got {n_counts}.")
    n = population["idx"].shape[0]
    ones, zeros = torch.ones(n), torch.zeros(n)

    def arm(
        design: torch.Tensor, efficacy: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        action = {PERTURBATION: design.expand(n, -1), **extra}
        if efficacy is not None:
            action[EFFICACY] = efficacy
        return arm_distribution(program, latents, population, action)

    control_mean, theta, _ = arm(torch.zeros_like(designs[0]), None)
    means: list[torch.Tensor] = []
    weights: list[
        list[tuple[int, torch.Tensor | None]]
    ] = []  # arms to simulate and, per label, (arm index, per-cell weight) pairs
    for design in designs:
        mean, _, p = arm(design, ones)  # p: response probability of each cell under this design
        if p is None or responders:  # no efficacy block (every cell responds), or the responders' effect
            weights.append([(len(means), None)])
            means.append(mean)
            continue
        escaper = control_mean if escaper_arms is False else arm(design, zeros)[0]
        pair: list[tuple[int, torch.Tensor | None]] = [(len(means), p)]
        means.append(mean)
        if torch.equal(escaper, control_mean):  # escapers look like controls (the current model): no extra arm
            pair.append((-1, 1.0 - p))
        else:
            pair.append((len(means), 1.0 - p))
            means.append(escaper)
        weights.append(pair)
    control, values = coupled_log_normalised(control_mean, theta, torch.stack(means), n_counts=n_counts)
    out = torch.zeros(designs.shape[0], *control.shape)
    for label, pairs in enumerate(weights):
        for index, w in pairs:
            value = control if index < 0 else values[index]
            out[label] += value if w is None else w.unsqueeze(-1) * value
    return out


def escapers_are_controls(
    program: PerturbationProgram,
    latents: dict[str, torch.Tensor],
    population: dict[str, torch.Tensor],
    designs: torch.Tensor,
    extra: Mapping[str, torch.Tensor],
) -> bool:
    """Whether every design's escaper arm (``efficacy = 0``) has exactly the control arm's counts distribution.

    True for a program whose interventions act only through the responders (the current model); then
    :func:`expected_cell_values` can skip the escaper arms (``escaper_arms=False``). Checked on one draw of the
    latents and the first :data:`ESCAPER_CHECK_DESIGNS` designs: the answer is a property of the program's
    structure.
    """
    n = population["idx"].shape[0]
    if n == 0:
        return False
    control = arm_distribution(
        program, latents, population, {PERTURBATION: torch.zeros_like(designs[0]).expand(n, -1), **extra}
    )
    if control[2] is None:  # no efficacy block: no escapers
        return True
    zeros = torch.zeros(n)
    for design in designs[:ESCAPER_CHECK_DESIGNS]:
        action = {PERTURBATION: design.expand(n, -1), **extra, EFFICACY: zeros}
        if not torch.equal(arm_distribution(program, latents, population, action)[0], control[0]):
            return False
    return True


def arm_distribution(
    program: PerturbationProgram,
    latents: dict[str, torch.Tensor],
    population: dict[str, torch.Tensor],
    action: Mapping[str, torch.Tensor],
    targets: TargetSubsample | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Negative binomial means and inverse dispersions of the population's counts under ``poutine.do(action)``.

    Parameters
    ----------
    program
        The model.
    latents
        Abducted latent sites (held fixed).
    population
        The cells' factual data.
    action
        Site name to intervened value.
    targets
        The program reads only these targets' global sites (``latents`` and the intervened ``perturbation`` then
        hold only their rows and columns); ``None``: every target.

    Returns
    -------
    Means ``(cells, G)``, inverse dispersions ``theta`` (broadcastable to the means), and the probability that
    each cell responds under the action (``efficacy`` site's distribution; ``None`` without that block).
    """
    args = standalone_args(population)._replace(targets=targets)
    conditioned = poutine.condition(program, data=latents)
    # The factual counts are passed as observed so that the model scores rather than samples them: only the
    # distribution of the counts site is read.
    trace = poutine.trace(poutine.do(conditioned, data=dict(action))).get_trace(population["counts"], *args[1:])
    fn: Any = trace.nodes[COUNTS]["fn"]
    base = getattr(fn, "base_dist", fn)
    mean = fn.mean
    if hasattr(base, "log_theta"):
        theta = base.log_theta.exp()
    else:  # any negative binomial: theta from its first two moments
        theta = mean.square() / (fn.variance - mean).clamp_min(1e-12)
    node = trace.nodes.get(EFFICACY)
    efficacy_fn: Any = None if node is None else node["fn"]
    response = None if efficacy_fn is None else efficacy_fn.mean
    return mean, theta, response


def coupled_log_normalised(
    control_mean: torch.Tensor,
    theta: torch.Tensor,
    arm_means: torch.Tensor,
    *,
    n_counts: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-cell expected ``log1p(1e4 x / sum x)`` of a control arm and of coupled arms, by Monte Carlo.

    Parameters
    ----------
    control_mean
        Negative binomial means of the control arm ``(cells, G)``.
    theta
        Inverse dispersion (broadcastable to ``(cells, G)``), shared by all arms.
    arm_means
        Means of the other arms ``(A, cells, G)``.
    n_counts
        Count replicates per cell (averaged).

    Returns
    -------
    Control values ``(cells, G)`` and arm values ``(A, cells, G)``, each averaged over the replicates.
    """
    shape = (n_counts, *control_mean.shape)
    theta = theta.expand(control_mean.shape)
    lam = torch._standard_gamma(theta.expand(shape).contiguous()) * (control_mean / theta)  # (R, cells, G)
    x = torch.poisson(lam)
    control = log_normalise(x).mean(0)
    out = torch.empty(arm_means.shape)
    for a in range(arm_means.shape[0]):  # a handful of arms; each step is vectorised over replicates and cells
        ratio = (arm_means[a] / control_mean).expand(shape)
        thinned = torch.binomial(x, ratio.clamp(max=1.0))
        added = torch.poisson(lam * (ratio - 1.0).clamp_min(0.0))
        counts = torch.where(ratio < 1.0, thinned, x + added)
        out[a] = log_normalise(counts).mean(0)
    return control, out
