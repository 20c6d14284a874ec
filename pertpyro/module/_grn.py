"""The ``grn`` block: perturbation effects as knockouts propagated through a sparse, inferred regulatory network.

GPO-VAE's idea as a Bayesian program. Regulators ``r`` are the perturbation targets (in registry order) followed by
optional extra measured genes (``grn_regulators``). Edges go from a regulator to a *measured gene* ``j``
(regulators x genes), so an edge ``i -> j`` means "regulator ``i`` changes the expression of gene ``j``": the
network lives in gene space and needs no latent program to be named. Generative story::

    adjacency[r, g]        ~ RelaxedBernoulli(pi_rg)   (hard 0/1 forward)   regulators x genes plate
    adjacency_weight[r, g] ~ Normal(0, s_w)                                regulators x genes plate
    A = adjacency * adjacency_weight                   (no self edges)
    A_RR = A restricted to the regulators' own gene columns               (regulators x regulators)
    knockout of r:  a_0 = -e_r,  a_{s+1} = a_s A_RR                        (activity changes)
    effect[r]     = direct_r e_{gene(r)} + sum_{s < n_steps} a_s A          (logit shift of every gene)

A knockout removes one unit of the regulator's *activity* (so a CRISPR knockout that barely lowers its own mRNA
still acts downstream), lowers its own mRNA by ``direct_r`` (a point estimate: a shared mean plus a per-regulator
offset, so a regulator never perturbed gets the mean), and a regulator's expression change is its activity change
for the next step. ``pi_rg`` is ``grn_density`` for every pair, or, for pairs listed in a prior network (e.g.
CollecTRI), ``prior_inclusion`` moved by a learned log-odds ``prior_shift`` (one point estimate for all listed pairs):
the prior is weighed by the data, not trusted, and :meth:`GRNPrior.prior_reliability` reports its learned weight. The effects of a target combination add, as in the free-effect model.

Identifiability: an edge ``i -> j`` is seen directly in the knockout of ``i``; an edge out of a regulator ``h`` that
was never perturbed is seen only through later propagation steps, in the knockouts that move ``h``'s expression.
When a single knockout ``p`` moves ``h`` (one perturbed parent, no other moved parent), the shifts of ``h``'s children
``c`` in that knockout (``A_ph A_hc``) are fitted exactly as well by direct edges ``p -> c`` (``A_pc = A_ph A_hc``)
with as many included edges (``p -> h`` is needed either way): only the Normal weight prior tells the two routes
apart, by ``(1 - 1 / A_ph^2) sum_c A_pc^2 / (2 s_w^2)`` nats in favour of the route through ``h`` (against it when
``|A_ph| < 1``), which is small when ``|A_ph|`` is near 1; the mean-field guide can then settle on the direct
edges and ``h``'s knockout is predicted at about zero. Several knockouts that move ``h`` (its children shift in each,
in proportion to ``h``'s shift) or a prior network listing ``h``'s targets make its edges identifiable, but a fit
started at zero can still settle on one direct edge per knockout: those get their gradient at once (``A_pc``), the
route through ``h`` only in proportion to ``A_ph``. ``grn_init_lasso`` starts the guide from a sparse regression of
the knockouts' moment effects on the regulators' activities (:func:`lasso_edge_init`), whose L1 penalty prefers the
one edge out of ``h``. The network acts on the knockouts' effects only: the covariation of genes among unperturbed
cells is the basal state's (the decoder's latent programs), so a regulator's natural variation in control cells does
not inform its edges.

A target that is not a measured gene has no incoming edges and no ``direct`` term (its row still carries outgoing
edges: with no target measured, the block is a sparse one-step target -> gene model).

Scaling with ``R`` regulators, ``G`` genes and ``K = n_steps``: memory ``O(R G)`` (four ``R x G`` tensors in the
guide and model: inclusion logits, weight location and scale, prior logits); time per step
``O(K R^2 (R + G))`` for the propagation, independent of the number of cells (it runs once per step, outside the
cells plate). At ``R = 1,000`` and ``G = 5,000`` that is 20 MB of parameters and ~3e10 flops for ``K = 3``: use
fewer regulators (the targets plus a few hundred variable genes) beyond that.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn

from pertpyro.module._components import inverse_softplus
from pertpyro.module.sites import ADJACENCY, ADJACENCY_WEIGHT, GENES_PLATE, REGULATORS_PLATE

LASSO_EDGE_INCLUSION = (0.9, 0.5)
"""Starting inclusion probability in the guide of the edges :func:`lasso_edge_init` selects, and of the others."""


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


EdgeAction = Callable[[Mapping[str, torch.Tensor]], dict[str, torch.Tensor]]
"""A function of one draw's latents giving the ``adjacency`` value of an edge intervention."""


class GRNPrior(PyroModule):
    """Model side of the ``grn`` block (see the module docstring).

    Parameters
    ----------
    regulator_gene
        Gene index of each regulator, ``-1`` for a regulator that is not a measured gene, shape ``(R,)``.
    n_genes
        Number of genes ``G``.
    n_targets
        Number of targets ``T``; regulators ``0..T-1`` are the targets.
    prior_logits
        Prior inclusion logit of every (regulator, gene) pair, ``(R, G)``.
    n_steps
        Propagation steps ``K`` (1: direct edges only).
    weight_scale
        Prior scale ``s_w`` of the edge weights.
    temperature
        Temperature of the relaxed Bernoulli of the inclusion.
    direct_init
        Initial own-mRNA knockout effect per regulator, ``(R,)`` (NaN: unknown, starts at the mean).
    prior_mask
        1 for the pairs listed in a prior network, ``(R, G)`` (``None``: none). Their inclusion logit is
        ``prior_logits + prior_shift``, with ``prior_shift`` (starting at 0) learned with the other point estimates:
        the prior network is weighed by how many of its edges the data keep (:meth:`prior_reliability`).
    """

    def __init__(
        self,
        regulator_gene: torch.Tensor,
        n_genes: int,
        n_targets: int,
        prior_logits: torch.Tensor,
        *,
        n_steps: int = 3,
        weight_scale: float = 1.0,
        temperature: float = 0.5,
        direct_init: torch.Tensor | None = None,
        prior_mask: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        n_reg = regulator_gene.shape[0]
        if n_reg < n_targets:
            raise ValueError("Every target must be a regulator.")
        if n_steps < 1:
            raise ValueError(f"grn_steps must be a positive integer, got {n_steps}.")
        self.n_regulators, self.n_genes, self.n_targets, self.n_steps = n_reg, n_genes, n_targets, int(n_steps)
        measured = regulator_gene >= 0
        selection = torch.zeros(n_genes, n_reg)  # selection[g, r] = 1 if regulator r is gene g
        selection[regulator_gene[measured], torch.arange(n_reg)[measured]] = 1.0
        self.register_buffer("selection", selection)
        self.register_buffer("edge_mask", 1.0 - selection.T)  # no self edges
        self.register_buffer("prior_logits", prior_logits.float())
        mask = torch.zeros(n_reg, n_genes) if prior_mask is None else prior_mask.float()
        self.register_buffer("prior_mask", mask * self.edge_mask)
        self.prior_shift = nn.Parameter(torch.tensor(0.0))
        self.register_buffer("regulator_gene", regulator_gene.long())
        self.register_buffer("weight_scale", torch.tensor(float(weight_scale)))
        self.register_buffer("temperature", torch.tensor(float(temperature)))
        self.register_buffer("zero", torch.tensor(0.0))
        init = torch.full((n_reg,), float("nan")) if direct_init is None else direct_init.float()
        known = ~torch.isnan(init)
        mean = float(init[known].mean()) if bool(known.any()) else -1.0
        self.direct_mean = nn.Parameter(torch.tensor(mean))
        self.direct_offset = nn.Parameter(torch.where(known, init - mean, torch.zeros_like(init)))

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: object, **kwargs: object) -> None:
        # a model saved before the prior network was weighed: no learned shift (its prior logits are kept as saved)
        state_dict.setdefault(prefix + "prior_mask", torch.zeros_like(self.prior_mask))
        state_dict.setdefault(prefix + "prior_shift", torch.zeros_like(self.prior_shift))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def inclusion_logits(self) -> torch.Tensor:
        """Prior inclusion logit of every pair, ``(R, G)``: the prior network's edges moved by ``prior_shift``."""
        return self.prior_logits + self.prior_mask * self.prior_shift

    def prior_reliability(self) -> dict[str, float]:
        """The learned weight of the prior network: inclusion probability of its edges and of the other pairs.

        Returns
        -------
        ``n_prior_edges`` (listed pairs among regulator -> gene pairs), ``prior_edge_inclusion`` (learned prior
        inclusion probability of a listed pair; NaN without a prior network), ``other_inclusion`` (of an unlisted
        pair), ``odds_ratio`` (the odds of the first over the second).
        """
        with torch.no_grad():
            logits = self.inclusion_logits()
            listed = self.prior_mask > 0
            other = (~listed) & (self.edge_mask > 0)
            lp = float(logits[listed].mean()) if bool(listed.any()) else float("nan")
            lo = float(logits[other].mean()) if bool(other.any()) else float("nan")
        return {
            "n_prior_edges": float(listed.sum()),
            "prior_edge_inclusion": 1.0 / (1.0 + math.exp(-lp)) if not math.isnan(lp) else float("nan"),
            "other_inclusion": 1.0 / (1.0 + math.exp(-lo)) if not math.isnan(lo) else float("nan"),
            "odds_ratio": math.exp(lp - lo) if not (math.isnan(lp) or math.isnan(lo)) else float("nan"),
        }

    def direct(self) -> torch.Tensor:
        """Own-mRNA logit change of each regulator's knockout, ``(R,)`` (0 for regulators that are not genes)."""
        return (self.direct_mean + self.direct_offset) * (self.regulator_gene >= 0).float()

    def regulator_effects(self, weighted: torch.Tensor) -> torch.Tensor:
        """Logit shift of every gene under the knockout of each regulator, ``(..., R, G)``.

        Parameters
        ----------
        weighted
            ``adjacency * adjacency_weight``, ``(..., R, G)``.
        """
        a = weighted * self.edge_mask  # (..., R, G)
        a_rr = a @ self.selection  # (..., R, R)
        activity = -torch.eye(self.n_regulators, device=a.device).expand_as(a_rr)
        total = activity
        for _ in range(self.n_steps - 1):
            activity = activity @ a_rr
            total = total + activity
        return total @ a + self.direct().unsqueeze(-1) * self.selection.T

    def forward(self) -> torch.Tensor:
        """Sample ``adjacency`` and ``adjacency_weight``; return the targets' effects ``(T, G)``."""
        R, G = self.n_regulators, self.n_genes
        with pyro.plate(REGULATORS_PLATE, R, dim=-2), pyro.plate(GENES_PLATE, G, dim=-1):
            inclusion = pyro.sample(
                ADJACENCY, dist.RelaxedBernoulliStraightThrough(self.temperature, logits=self.inclusion_logits())
            )  # (R, G), hard 0/1
            weight = pyro.sample(ADJACENCY_WEIGHT, dist.Normal(self.zero, self.weight_scale).expand([R, G]))  # (R, G)
        return self.regulator_effects(inclusion * weight)[..., : self.n_targets, :]


class GRNGuide(PyroModule):
    """Guide side of the ``grn`` block: relaxed Bernoulli (straight-through) inclusion, mean-field Normal weights.

    Parameters
    ----------
    prior
        The model side, whose shapes and temperature this guide copies.
    inclusion_init
        Initial posterior inclusion probability of every edge (high, so that weights receive gradients early; the
        sparse prior then removes the edges the data do not support).
    """

    def __init__(self, prior: GRNPrior, *, inclusion_init: float = 0.7) -> None:
        super().__init__()
        R, G = prior.n_regulators, prior.n_genes
        self.logit = nn.Parameter(torch.full((R, G), _logit(inclusion_init)))
        self.weight_loc = nn.Parameter(torch.zeros(R, G))
        start = getattr(prior, "weight_init", None)  # lasso_edge_init's edges
        if start is not None:
            selected, other = (_logit(p) for p in LASSO_EDGE_INCLUSION)
            with torch.no_grad():
                self.weight_loc.copy_(start)
                self.logit.copy_(torch.where(start != 0, torch.tensor(selected), torch.tensor(other)))
        self.weight_raw_scale = nn.Parameter(torch.full((R, G), inverse_softplus(0.05)))
        self.register_buffer("temperature", prior.temperature.clone())

    def weight_scale(self) -> torch.Tensor:
        """Posterior sd of the edge weights, ``(R, G)``."""
        return nn.functional.softplus(self.weight_raw_scale) + 1e-5

    def forward(self) -> None:
        """Sample the block's sites."""
        R, G = self.logit.shape
        with pyro.plate(REGULATORS_PLATE, R, dim=-2), pyro.plate(GENES_PLATE, G, dim=-1):
            pyro.sample(ADJACENCY, dist.RelaxedBernoulliStraightThrough(self.temperature, logits=self.logit))
            pyro.sample(ADJACENCY_WEIGHT, dist.Normal(self.weight_loc, self.weight_scale()))


# ---------------------------------------------------------------------------------------------------------------
# Building the block from a registry, reading it out, and edge interventions


def regulator_names(targets: Sequence[str], genes: Sequence[str], extra: Sequence[str] | None) -> list[str]:
    """Targets in order, then the extra regulators (measured genes) that are not targets."""
    regulators = list(targets)
    if extra is not None:
        if isinstance(extra, str):
            extra = [extra]
        gene_set = set(genes)
        missing = sorted(set(extra) - gene_set)
        if missing:
            raise ValueError(f"grn_regulators must be measured genes; not in var_names: {missing[:10]}.")
        seen = set(regulators)
        regulators += [g for g in extra if not (g in seen or seen.add(g))]
    return regulators


def prior_logits(
    regulators: Sequence[str],
    genes: Sequence[str],
    network: pd.DataFrame | None,
    *,
    density: float,
    prior_inclusion: float,
) -> torch.Tensor:
    """Prior inclusion logits ``(R, G)``: ``logit(density)``, or ``logit(prior_inclusion)`` for listed edges."""
    for name, p in (("grn_density", density), ("grn_prior_inclusion", prior_inclusion)):
        if not 0.0 < p < 1.0:
            raise ValueError(f"{name} must lie strictly between 0 and 1, got {p}.")
    mask = network_mask(regulators, genes, network)
    return torch.where(mask > 0, _logit(prior_inclusion), _logit(density))


def network_mask(regulators: Sequence[str], genes: Sequence[str], network: pd.DataFrame | None) -> torch.Tensor:
    """``(R, G)`` 0/1: the (regulator, gene) pairs listed in ``network`` (all 0 for ``None``)."""
    out = torch.zeros(len(regulators), len(genes))
    if network is not None:
        if not isinstance(network, pd.DataFrame) or not {"source", "target"} <= set(network.columns):
            raise ValueError(
                "grn_prior must be a DataFrame with columns 'source' and 'target' (e.g. datasets.collectri())."
            )
        rows = pd.Index(list(regulators)).get_indexer(network["source"].astype(str))
        cols = pd.Index(list(genes)).get_indexer(network["target"].astype(str))
        keep = (rows >= 0) & (cols >= 0)
        out[torch.from_numpy(rows[keep]), torch.from_numpy(cols[keep])] = 1.0
    return out


def total_effect_summary(
    guide: GRNGuide, prior: GRNPrior, *, n_samples: int = 100, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and sd of the total (propagated) logit shift of every gene under each knockout, ``(R, G)`` each.

    The knockout's effect through every path of the network (the map of :meth:`GRNPrior.regulator_effects`), over
    ``n_samples`` draws of the guide's edges (hard 0/1 inclusion) and weights; deterministic under ``seed``. The
    regulator's own-mRNA term ``direct`` is included in its own gene's column.
    """
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}.")
    generator = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        prob = torch.sigmoid(guide.logit)
        first = torch.zeros_like(prob, dtype=torch.float64)
        second = torch.zeros_like(first)
        for _ in range(n_samples):
            included = (torch.rand(prob.shape, generator=generator) < prob).float()
            weight = guide.weight_loc + guide.weight_scale() * torch.randn(prob.shape, generator=generator)
            draw = prior.regulator_effects(included * weight).double()
            first += draw
            second += draw**2
    mean = first / n_samples
    var = (second / n_samples - mean**2).clamp(min=0.0)
    return mean.float().numpy(), var.sqrt().float().numpy()


def total_effects(guide: GRNGuide, prior: GRNPrior, *, n_samples: int = 100, seed: int = 0) -> np.ndarray:
    """Posterior-mean total (propagated) logit shift of every gene under each regulator's knockout, ``(R, G)``.

    The mean of :func:`total_effect_summary`.
    """
    return total_effect_summary(guide, prior, n_samples=n_samples, seed=seed)[0]


def edge_table(
    guide: GRNGuide,
    prior: GRNPrior,
    regulators: Sequence[str],
    genes: Sequence[str],
    *,
    ci: float,
    threshold: float | None,
    n_samples: int = 100,
    seed: int = 0,
) -> pd.DataFrame:
    """Tidy edges ``(source, target, score, prob, weight, ci_lower, ci_upper, total, total_sd)`` sorted by ``score``.

    ``score = prob * |weight| / sd``: the posterior inclusion probability times the weight's posterior mean in units
    of its posterior sd (the evidence that the edge exists and that its effect is not zero; the inclusion alone
    saturates near 1 and ties, and a weight's size alone favours the noisy large logit changes of lowly expressed
    genes). ``total`` and ``total_sd`` are the posterior mean and sd of the total effect of the source's knockout on
    the target (:func:`total_effect_summary`).
    """
    if not 0 < ci < 1:
        raise ValueError(f"ci must lie strictly between 0 and 1, got {ci}.")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold}.")
    with torch.no_grad():
        prob = torch.sigmoid(guide.logit).numpy()
        loc = guide.weight_loc.numpy()
        scale = guide.weight_scale().numpy()
        allowed = prior.edge_mask.numpy() > 0
    total, total_sd = total_effect_summary(guide, prior, n_samples=n_samples, seed=seed)
    z = float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(0.5 + ci / 2)))
    rows, cols = np.nonzero(allowed)
    p, w, sd = prob[rows, cols], loc[rows, cols], scale[rows, cols]
    table = pd.DataFrame(
        {
            "source": np.asarray(regulators, dtype=object)[rows],
            "target": np.asarray(genes, dtype=object)[cols],
            "score": p * np.abs(w) / sd,
            "prob": p,
            "weight": w,
            "ci_lower": w - z * sd,
            "ci_upper": w + z * sd,
            "total": total[rows, cols],
            "total_sd": total_sd[rows, cols],
        }
    )
    if threshold is not None:
        table = table[table["prob"] >= threshold]
    return table.sort_values(["score", "source", "target"], ascending=[False, True, True], ignore_index=True)


def edge_intervention(
    spec: Mapping, regulators: Sequence[str], genes: Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn ``{(source, target): 0 or 1, ...}`` into a ``(R, G)`` 0/1 mask of intervened edges and their values."""
    if not isinstance(spec, Mapping) or not spec:
        raise ValueError("do={'adjacency': {(source, target): 0 or 1, ...}} needs at least one edge.")
    r_index = {r: i for i, r in enumerate(regulators)}
    g_index = {g: j for j, g in enumerate(genes)}
    where = torch.zeros(len(regulators), len(genes))
    value = torch.zeros(len(regulators), len(genes))
    for key, v in spec.items():
        if not (isinstance(key, tuple) and len(key) == 2):
            raise ValueError(f"An edge is a (source, target) pair, got {key!r}.")
        source, target = key
        if source not in r_index:
            raise ValueError(f"Unknown regulator {source!r}: regulators are the targets and grn_regulators.")
        if target not in g_index:
            raise ValueError(f"Unknown target gene {target!r}: not among the registered genes.")
        if v not in (0, 1):
            raise ValueError(f"An edge can be set to 0 (absent) or 1 (present), got {v!r} for {key}.")
        where[r_index[source], g_index[target]] = 1.0
        value[r_index[source], g_index[target]] = float(v)
    return where, value


def adjacency_action(where: torch.Tensor, value: torch.Tensor) -> EdgeAction:
    """A function of the abducted latents giving ``{"adjacency": draw with the intervened edges set}``."""

    def action(latents: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        draw = latents[ADJACENCY]
        return {ADJACENCY: torch.where(where > 0, value, draw)}

    return action


def varp_matrix(table: pd.DataFrame, genes: Sequence[str]) -> np.ndarray:
    """``(G, G)`` posterior inclusion, row = source gene, column = target gene; sources that are not genes dropped."""
    g_index = pd.Index(list(genes))
    rows = g_index.get_indexer(table["source"].astype(str))
    cols = g_index.get_indexer(table["target"].astype(str))
    keep = rows >= 0
    out = np.zeros((len(genes), len(genes)), dtype=np.float32)
    out[rows[keep], cols[keep]] = table["prob"].to_numpy()[keep]
    return out


def build_grn_prior(
    targets: Sequence[str],
    genes: Sequence[str],
    *,
    network: pd.DataFrame | None,
    extra_regulators: Sequence[str] | None,
    density: float,
    prior_inclusion: float,
    n_steps: int,
    weight_scale: float,
    own_effect: np.ndarray | None = None,
    moment_effects: np.ndarray | None = None,
    has_cells: np.ndarray | None = None,
    lasso: float | None = None,
) -> tuple[GRNPrior, list[str]]:
    """The model side of the block for a registry's targets and genes; also returns the regulator names.

    Parameters
    ----------
    targets, genes
        Registered targets (the first regulators) and genes.
    network
        Prior network ``DataFrame(source, target[, weight])`` or ``None`` (uniform-sparse prior).
    extra_regulators
        Measured genes added as regulators after the targets (they may be perturbed only in predictions).
    density, prior_inclusion
        Prior inclusion probability of an edge, and of an edge listed in ``network``.
    n_steps
        Propagation steps.
    weight_scale
        Prior sd of the edge weights.
    own_effect
        Moment estimate of each target's effect on its own gene (NaN where unknown), ``(T,)``: starts ``direct``.
    moment_effects, has_cells, lasso
        Moment estimates of the targets' effects ``(T, G)``, whether each target has training cells ``(T,)``, and the
        L1 penalty of :func:`lasso_edge_init`, which then gives the guide its starting edges; ``None``: edges start at
        weight 0.
    """
    if isinstance(n_steps, bool) or not isinstance(n_steps, int | np.integer) or n_steps < 1:
        raise ValueError(f"grn_steps must be a positive integer, got {n_steps!r}.")
    if not weight_scale > 0:
        raise ValueError(f"grn_weight_scale must be positive, got {weight_scale!r}.")
    regulators = regulator_names(targets, genes, extra_regulators)
    gene_index = pd.Index(list(genes)).get_indexer(regulators)  # -1: not a measured gene
    direct_init = torch.full((len(regulators),), float("nan"))
    if own_effect is not None:
        direct_init[: len(targets)] = torch.as_tensor(own_effect, dtype=torch.float32)
    direct_init[torch.from_numpy(gene_index < 0)] = float("nan")
    prior = GRNPrior(
        torch.from_numpy(gene_index),
        len(genes),
        len(targets),
        prior_logits(regulators, genes, network, density=density, prior_inclusion=prior_inclusion),
        n_steps=int(n_steps),
        weight_scale=float(weight_scale),
        direct_init=direct_init,
        prior_mask=network_mask(regulators, genes, network),
    )
    if lasso is not None and moment_effects is not None:
        rows = np.ones(len(targets), dtype=bool) if has_cells is None else np.asarray(has_cells, dtype=bool)
        prior.weight_init = torch.from_numpy(lasso_edge_init(moment_effects, rows, gene_index, alpha=lasso))
    return prior, regulators


def lasso_edge_init(
    effects: np.ndarray, has_cells: np.ndarray, regulator_gene: np.ndarray, *, alpha: float
) -> np.ndarray:
    """Starting edge weights ``(R, G)``: each gene's knockout shifts regressed on the regulators' activities (L1).

    The block's story, read with observed shifts in place of the propagated ones: in the knockout of target ``k``
    every gene ``c`` moves by ``sum_r act_kr A_rc``, where the activity change ``act_kr`` is ``-1`` for ``r = k`` and
    the shift of ``r``'s own gene for any other measured regulator (:meth:`GRNPrior.regulator_effects`). With the
    targets' moment effects ``effects`` as the shifts, each gene's column of ``A`` is a Lasso regression over the
    knockouts with training cells (no intercept; a regulator's own gene is fitted without that regulator and without
    its own knockout, whose ``direct`` term it holds). The L1 penalty prefers one edge out of a regulator that all
    the knockouts moving a gene also move over one direct edge per knockout: the explanation that a fit started at
    zero misses, because the direct edges get their gradient first (``A_kc``) and the route through ``r`` only in
    proportion to ``A_kr``.

    Parameters
    ----------
    effects
        Moment estimates of the targets' effects on every gene ``(T, G)`` (log expression ratios).
    has_cells
        Whether each target has training cells ``(T,)``; the others enter only as regulators.
    regulator_gene
        Gene index of each regulator ``(R,)``, ``-1`` for one that is not a measured gene.
    alpha
        L1 penalty (scikit-learn's ``Lasso``, on the mean squared error over knockouts).
    """
    from sklearn.linear_model import Lasso

    G = effects.shape[1]
    R = len(regulator_gene)
    rows = np.flatnonzero(has_cells)
    measured = np.flatnonzero(regulator_gene >= 0)
    activity = np.zeros((len(rows), R))
    activity[:, measured] = effects[np.ix_(rows, regulator_gene[measured])]
    activity[np.arange(len(rows)), rows] = -1.0  # the knocked-out target itself
    weights = np.zeros((R, G), dtype=np.float32)
    if len(rows) == 0:
        return weights
    shifts = effects[rows]
    own_columns = set(regulator_gene[measured].tolist())
    plain = np.array([c for c in range(G) if c not in own_columns], dtype=int)
    if len(plain):
        fit = Lasso(alpha=alpha, fit_intercept=False, max_iter=5000).fit(activity, shifts[:, plain])
        weights[:, plain] = fit.coef_.reshape(len(plain), R).T
    for r in measured:
        c, others = regulator_gene[r], np.flatnonzero(np.arange(R) != r)
        keep = rows != r
        if keep.sum() == 0 or len(others) == 0:
            continue
        fit = Lasso(alpha=alpha, fit_intercept=False, max_iter=5000).fit(
            activity[np.ix_(keep, others)], shifts[keep, c]
        )
        weights[others, c] = fit.coef_
    return weights
