"""Per-guide response rates under a per-target prior (``efficacy_per_guide``): sites ``efficacy_guide_rate``.

Guides of one target differ in how often they knock it out. With a guide column registered, each targeting guide
``g`` of label ``l(g)`` (a target or a combination) has its own response rate, drawn around the rate of its
label's targets::

    rho_t                ~ Beta(a, 1) or Beta(1, 1)                         efficacy_rate, targets plate
    logit rho_g          ~ Normal(logit prod_{t in l(g)} rho_t, s)          efficacy_guide_rate, guides plate
    efficacy[n]          ~ Bernoulli(rho_{g(n)})                            a cell with its factual perturbation

``s`` (the spread of the guides around their target) is a point estimate shared by all guides (empirical Bayes),
so a screen whose guides agree shrinks every guide to its target and one whose guides differ lets them apart.

**What an intervention means.** ``do(perturbation=label)`` sets a cell's targets, not its guide: the cell received
"a guide of the target" as a cell of the screen does. Its response rate is then the mixture of the target's
guides weighted by their numbers of training cells, ``r_t = sum_g w_tg rho_g`` (a Bernoulli of a randomly drawn
guide is a Bernoulli of the mixed rate), and ``prod_t r_t ** d_t`` for a combination, as without guides. So
``model.ate("STAT1")`` is the intent-to-treat effect of the screen's STAT1 guides, in their proportions; a target
without guides of its own (only in combinations) falls back to ``rho_t``. A cell keeps its own guide's rate only
while its perturbation is its factual one.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn

from pertpyro.module._components import inverse_softplus
from pertpyro.module.sites import EFFICACY_GUIDE_RATE, EFFICACY_RATE, GUIDES_PLATE

GUIDE_SPREAD_INIT = 0.5
"""Initial spread ``s`` of the guides' logit rates around their target's (learned)."""

GUIDE_RATE_INIT_LOGIT = 1.0
"""Initial logit of the guide's per-guide response rates (rate ~0.73), as the per-target ones."""


def guides_plate(owner: nn.Module, n_guides: int) -> pyro.plate:
    """The ``guides`` plate (dim -2, as the targets plate), built once per module and re-entered."""
    cached = owner.__dict__.get("_guides_plate")
    if cached is None or cached[0] != n_guides:
        with poutine.block():  # its subsample site stays out of every trace
            cached = (n_guides, pyro.plate(GUIDES_PLATE, n_guides, dim=-2))
        owner.__dict__["_guides_plate"] = cached
    return cached[1]


def _logit(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(1e-6, 1 - 1e-6)
    return torch.log(p) - torch.log1p(-p)


class GuideRates(nn.Module):
    """Model side: the guides' design, their mixture weights per target and the spread ``s`` (module docstring).

    Parameters
    ----------
    guide_design
        Multi-hot targets of each targeting guide's label, ``(n_guides, T)``.
    guide_cells
        Training cells carrying each guide, ``(n_guides,)``: the weights of the guides of a target.
    """

    def __init__(self, guide_design: torch.Tensor, guide_cells: torch.Tensor) -> None:
        super().__init__()
        design = guide_design.float()
        self.n_guides = design.shape[0]
        single = design * (design.sum(1, keepdim=True) == 1)  # guides of one target only
        weight = single.T * guide_cells.float().clamp_min(0)  # (T, n_guides)
        total = weight.sum(1, keepdim=True)
        equal = single.T / single.T.sum(1, keepdim=True).clamp_min(1.0)  # targets whose guides have no cells
        weight = torch.where(total > 0, weight / total.clamp_min(1e-12), equal)
        self.register_buffer("guide_design", design)
        self.register_buffer("mixture", weight)
        self.register_buffer("has_guides", single.sum(0) > 0)
        self.register_buffer("guide_cells", guide_cells.float().clone())
        self.raw_spread = nn.Parameter(torch.tensor(inverse_softplus(GUIDE_SPREAD_INIT)))

    def spread(self) -> torch.Tensor:
        """Spread ``s`` of the guides' logit rates around their label's, a scalar."""
        return nn.functional.softplus(self.raw_spread) + 1e-3

    def plate(self) -> pyro.plate:
        """The ``guides`` plate of the model."""
        return guides_plate(self, self.n_guides)

    def prior(self, target_rate: torch.Tensor, rows: torch.Tensor | None) -> dist.Distribution:
        """Prior of the guides' rates given the targets' ``(R, 1)`` (``rows``: which targets, ``None``: all)."""
        design = self.guide_design if rows is None else self.guide_design[:, rows]
        center = _logit(torch.exp(design @ torch.log(target_rate.clamp_min(1e-6))))  # (n_guides, 1)
        base = dist.Normal(center, self.spread().expand_as(center))
        return dist.TransformedDistribution(base, [dist.transforms.SigmoidTransform()])

    def target_rates(
        self, target_rate: torch.Tensor, guide_rate: torch.Tensor, rows: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Rate of each target under an intervention, ``(..., R, 1)``: its guides' mixture, else ``rho_t``."""
        mixture, has = (self.mixture, self.has_guides) if rows is None else (self.mixture[rows], self.has_guides[rows])
        mixed = mixture @ guide_rate  # (..., R, 1)
        return torch.where(has.unsqueeze(-1), mixed, target_rate)

    def escapes(self, efficacy_targets: torch.Tensor | None) -> torch.Tensor | None:
        """Which guides may have escapers (any target of their label does), ``(n_guides, 1)``; ``None``: all."""
        if efficacy_targets is None:
            return None
        return ((self.guide_design @ efficacy_targets.float()) > 0).unsqueeze(-1)

    @staticmethod
    def cell_probability(guide_rate: torch.Tensor, guide: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
        """``P(efficacy = 1)`` of cells with their factual perturbation: their guide's rate, ``fallback`` without one.

        ``guide`` holds each cell's guide row (``-1``: a control guide or a guide the model does not know),
        ``guide_rate`` is ``(..., n_guides, 1)``, ``fallback`` ``(..., B)``.
        """
        own = guide_rate.squeeze(-1)[..., guide.clamp_min(0)]  # (..., B)
        return torch.where(guide >= 0, own.clamp(1e-4, 1 - 1e-4), fallback)


class GuideRatesGuide(nn.Module):
    """Guide side: a logit-normal posterior of each guide's rate, batch shape ``(n_guides, 1)``."""

    def __init__(self, n_guides: int) -> None:
        super().__init__()
        self.n_guides = n_guides
        self.loc = nn.Parameter(torch.full((n_guides,), GUIDE_RATE_INIT_LOGIT))
        self.raw_scale = nn.Parameter(torch.full((n_guides,), inverse_softplus(0.1)))

    def distribution(self) -> dist.Distribution:
        """The posterior of the guides' rates."""
        scale = nn.functional.softplus(self.raw_scale) + 1e-4
        base = dist.Normal(self.loc.unsqueeze(-1), scale.unsqueeze(-1))
        return dist.TransformedDistribution(base, [dist.transforms.SigmoidTransform()])

    def plate(self) -> pyro.plate:
        """The ``guides`` plate of the guide."""
        return guides_plate(self, self.n_guides)

    def median(self) -> torch.Tensor:
        """Posterior median of the guides' rates, ``(n_guides,)``."""
        return torch.sigmoid(self.loc)

    def interval(self, ci: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Central ``ci`` credible interval of each guide's rate (quantiles of the logit-normal)."""
        z = math.sqrt(2.0) * torch.erfinv(torch.tensor(ci))
        scale = nn.functional.softplus(self.raw_scale) + 1e-4
        return torch.sigmoid(self.loc - z * scale), torch.sigmoid(self.loc + z * scale)


def intervention_rates(program: nn.Module, latents: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-target response rates ``(..., T, 1)`` of a program under ``do(perturbation=...)``, from drawn sites.

    Without per-guide rates, ``efficacy_rate`` itself; with them, the targets' guide mixtures. Targets without
    escapers (``efficacy_targets``) respond in every cell.
    """
    rate = latents[EFFICACY_RATE]
    guides: GuideRates | None = getattr(program, "guide_rates", None)
    if guides is not None:
        guide_rate = latents[EFFICACY_GUIDE_RATE]
        escapes = guides.escapes(program.efficacy_targets)
        if escapes is not None:
            guide_rate = torch.where(escapes, guide_rate, torch.ones(()))
        rate = guides.target_rates(rate, guide_rate)
    efficacy_targets = program.efficacy_targets
    if efficacy_targets is not None:
        rate = torch.where(efficacy_targets.unsqueeze(-1), rate, torch.ones(()))
    return rate


__all__ = ["GuideRates", "GuideRatesGuide", "guides_plate", "intervention_rates"]
