"""The generative model and its guide: one Pyro program with switchable blocks.

Generative story (cells ``n``, genes ``g``, targets ``t``, basal latent dims ``k``)::

    sigma_g, pi, theta_g                       point-estimated hyperparameters (empirical Bayes)
    a >= 1                                      point-estimated concentration (``efficacy_prior="learned"``)
    rho_t             ~ Beta(a, 1)                                 per-target response rate (``efficacy``)
                        (``efficacy_prior="uniform"``: Beta(1, 1))
    logit rho_g       ~ Normal(logit prod_{t in l(g)} rho_t, s)    per-guide rate (``efficacy_per_guide``; guides
                                                                   plate; pertpyro.module._guide_rates)
    effect[t, g]      ~ StudentT(df, 0, sigma_g)                   targets x genes plate (df=0: Normal(0, sigma_g))
    effect_mask[t, g] ~ RelaxedBernoulli(pi)   (hard 0/1 forward)  targets x genes plate (``sparse_effects``)
    (``grn``: instead, effect[t] = the knockout of t propagated through adjacency * adjacency_weight, regulators x
     genes plate; see pertpyro.module._grn)
    latent_effect[t, k] ~ StudentT(df, 0, tau_k)                   targets x latent plate (``latent_effects``)
    for each cell n (plate "cells", subsampled):
        z_basal[n]      ~ Normal(0, I_K)
        perturbation[n] ~ Bernoulli(freq_t)    observed multi-hot d_n (so ``poutine.do`` can set it)
        efficacy[n]     ~ Bernoulli(prod_t rho_t ** d_nt)   enumerated in training (``efficacy``)
                          (per-guide rates: Bernoulli(rho_{g(n)}), the cell's own guide)
        library[n]      ~ Normal(loc_b + efficacy[n] * d_n @ lambda, scale_b)   observed log total counts
        z[n]            = z_basal[n] + efficacy[n] * d_n @ latent_effect          (``latent_effects``; else z_basal[n])
        logits[n]       = decoder(z[n], batch_n) + efficacy[n] * d_n @ (effect * effect_mask)
        x[n]            ~ NegativeBinomial(mean = exp(library[n]) * softmax(logits[n]), dispersion theta_g)

With ``artifacts`` set, the sites ``artifact``, ``artifact_kind``, ``artifact_label`` (cells) and
``artifact_embedding`` (global) add a technical-artifact offset to the logits and change the library and dispersion
of artifact cells (:mod:`pertpyro.module._artifacts`).

A knockout changes the composition of a cell's expression (``effect``) and its total counts over the measured
genes (``lambda``, per target): strong knockouts can lower a cell's total counts, and the log-normalised scale a
screen is analysed on is not indifferent to depth. Under
``poutine.do(perturbation=...)`` the counts are drawn at the cell's own depth moved by the intervened targets'
``lambda`` (the depth noise is kept: abduction).

The perturbation acts as an offset on the decoder's gene logits (gene-space effects): a knockout's effect on
gene g is read off directly, the basal latent cannot absorb it through the decoder's nonlinearity, and the
per-gene Student-t prior of scale ``sigma_g`` shares strength across targets (empirical-Bayes shrinkage toward no change,
with the scale learned per gene). ``efficacy`` is the Mixscape idea as a latent: many cells that received a guide
escaped the knockout and look like controls.

With ``latent_effects`` a knockout also moves the state the decoder reads (SAMS-VAE's latent perturbation
embeddings): a shift along the decoder's programs of basal variation (e.g. the interferon response that the
strongest Papalexi knockouts remove) is one latent vector per target instead of a per-cell displacement of
``z_basal``, which stays ``N(0, I)`` in every cell. The guide of ``z_basal`` subtracts the drawn shift of a cell's
targets from the encoder's output, so a perturbed cell's basal state is read off the same scale as a control cell's;
``do(perturbation=...)`` on control cells then carries the latent part of the effect as well as the gene part.

The effect mask uses a relaxed (concrete) Bernoulli in the model *and* the guide, so that the KL term of the
ELBO compares two densities on the same space (Maddison et al. 2017); its forward value is hard 0/1
(straight-through), so ``do(effect_mask=...)`` takes plain 0/1 tensors.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import PyroModule
from pyro.nn.module import to_pyro_module_
from torch import nn

from pertpyro.module._artifacts import ArtifactBlock, ArtifactGuide
from pertpyro.module._components import BasalEncoder, GeneDecoder, inverse_softplus
from pertpyro.module._distributions import (
    MarkedBernoulli,
    NegativeBinomialLogMean,
    PresentColumnsBernoulli,
    SharedScaleStudentT,
    is_enumerated_support,
)
from pertpyro.module._grn import GRNGuide, GRNPrior
from pertpyro.module._guide_rates import GuideRates, GuideRatesGuide
from pertpyro.module._independence import basal_dependence
from pertpyro.module._targets import TargetSubsample
from pertpyro.module.sites import (
    CELLS_PLATE,
    COUNTS,
    EFFECT,
    EFFECT_MASK,
    EFFICACY,
    EFFICACY_GUIDE_RATE,
    EFFICACY_RATE,
    GENES_PLATE,
    INDEPENDENCE,
    LATENT_EFFECT,
    LATENT_PLATE,
    LIBRARY,
    PERTURBATION,
    TARGETS_PLATE,
    Z_BASAL,
)

EFFICACY_INIT_LOGIT = 1.0
"""Initial logit of the guide's per-target response rates (rate ~0.73)."""

FULL_RESPONSE_INIT = 5.0
"""Initial concentration ``a`` of the ``Beta(a, 1)`` prior of the response rates (``efficacy_prior="learned"``):
median 0.87; ``a`` is learned across targets."""

EFFECT_SCALE_FLOOR = 1e-5
"""Smallest posterior scale of an effect."""

SPARSE_GUIDE_PARAMETERS = (
    "effect_loc",
    "effect_raw_scale",
    "mask_logit",
    "latent_effect_loc",
    "latent_effect_raw_scale",
)
"""The guide's targets x genes parameters: read row-wise with sparse gradients when a step gives ``targets``."""

LATENT_EFFECT_PRIOR_INIT = 0.5
"""Initial prior scale ``tau_k`` of the latent effects (learned per latent dimension)."""

EFFICACY_PRIORS = ("learned", "uniform")
"""Priors of the per-target response rates (:meth:`PerturbationProgram.response_rate_prior`)."""

MAX_PLATE_NESTING = 2
"""Plates nest at most two deep (targets x genes); the enumerated ``efficacy`` dimension sits left of them."""


def global_plates(owner: nn.Module, n_targets: int, n_genes: int) -> tuple[AbstractContextManager, pyro.plate]:
    """The ``targets`` and ``genes`` plates of the global sites, built once per module and re-entered on every run.

    Building a plate sends its subsample site through Pyro's handler stack; these two never subsample, so one
    instance of each serves every run of ``owner`` (re-entering a plate object is a documented use). With no targets
    the ``targets`` plate is a no-op context: its sites are skipped.
    """
    cached = owner.__dict__.get("_global_plates")
    if cached is None or cached[0] != (n_targets, n_genes):
        with poutine.block():  # their subsample sites stay out of every trace, on the first run as on later ones
            targets = pyro.plate(TARGETS_PLATE, n_targets, dim=-2) if n_targets else nullcontext()
            cached = ((n_targets, n_genes), targets, pyro.plate(GENES_PLATE, n_genes, dim=-1))
        owner.__dict__["_global_plates"] = cached
    return cached[1], cached[2]


def latent_plate(owner: nn.Module, latent_dim: int) -> pyro.plate:
    """The ``latent`` plate of the ``latent_effect`` site (dim -1, beside the ``targets`` plate), built once per module."""
    cached = owner.__dict__.get("_latent_plate")
    if cached is None or cached[0] != latent_dim:
        with poutine.block():  # as global_plates: its subsample site stays out of every trace
            cached = (latent_dim, pyro.plate(LATENT_PLATE, latent_dim, dim=-1))
        owner.__dict__["_latent_plate"] = cached
    return cached[1]


def subsampled_target_plate(n_targets: int, targets: TargetSubsample) -> Callable[[], AbstractContextManager]:
    """The ``targets`` plate subsampled to a minibatch's targets, each row's terms weighted by ``targets.weight``.

    Builds the plate once (its subsample site enters the trace, as the ``cells`` plate's does) and returns a
    function giving a context that enters it, once per site. Pyro scales a subsampled plate by
    ``n_targets / P``; the extra scale makes each row's weight ``targets.weight`` (an inverse inclusion probability).
    """
    n_rows = targets.rows.shape[0]
    target_plate = pyro.plate(TARGETS_PLATE, n_targets, subsample=targets.rows, dim=-2)
    weight = poutine.scale(scale=(targets.weight * (n_rows / n_targets)).unsqueeze(-1))

    @contextmanager
    def enter() -> Iterator[None]:
        with weight, target_plate:
            yield

    return enter


def _present_design(frequency: torch.Tensor, index: torch.Tensor, n_cells: int) -> PresentColumnsBernoulli:
    """Prior of the ``perturbation`` site over the columns ``index``; the others are 0 in every cell."""
    log_absent = torch.log1p(-frequency)
    absent = log_absent.sum() - log_absent[index].sum()
    return PresentColumnsBernoulli(frequency[index], absent, torch.Size([n_cells]))


def _rows(weight: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    """``weight`` itself, or its rows ``index`` with a sparse gradient (only those rows are touched)."""
    return weight if index is None else nn.functional.embedding(index, weight, sparse=True)


class PerturbationProgram(PyroModule):
    """Generative model ``p(x, z_basal, efficacy, effect, effect_mask | perturbation)`` (see module docstring).

    Parameters
    ----------
    n_genes
        Number of genes ``G``.
    n_targets
        Number of individual perturbation targets ``T``.
    n_batches
        Number of batch categories (0 or 1: no batch covariate).
    latent_dim
        Dimension ``K`` of the basal latent state.
    n_hidden
        Hidden width of the decoder (0: linear decoder).
    target_frequency
        Fraction of cells carrying each target, the prior of the observed ``perturbation`` site.
    gene_bias
        Initial per-gene log expression share for the decoder bias.
    sparse_effects
        Whether the spike-and-slab ``effect_mask`` block is on.
    efficacy
        Whether the per-cell ``efficacy`` block is on (otherwise every perturbed cell responds).
    efficacy_targets
        Optional boolean ``(T,)``: only these targets have escapers (the others' response rate is fixed at 1);
        ``None``: all targets.
    efficacy_prior
        Prior of the per-target response rates: ``"learned"``, ``Beta(a, 1)`` with its density rising toward
        "every cell responds" and ``a >= 1`` learned across targets (empirical Bayes), so that a target whose cells
        do not split into responders and escapers falls back to full response; ``"uniform"``: ``Beta(1, 1)``.
    mask_prior
        Initial prior inclusion probability of an effect (learned).
    mask_temperature
        Temperature of the relaxed Bernoulli of the mask.
    library_init
        Initial per-batch mean and sd of the log library size.
    grn
        The ``grn`` block (:class:`~pertpyro.module._grn.GRNPrior`): the targets' effects are knockouts propagated
        through a sparse regulator -> gene network (sites ``adjacency``, ``adjacency_weight``) instead of free
        ``effect`` / ``effect_mask`` sites.
    artifacts
        Technical-artifact block (:mod:`pertpyro.module._artifacts`): ``None`` (off), ``"observed"`` or ``"latent"``.
    n_artifact_evidence
        Number of QC evidence columns of the artifact block (the ``artifact_evidence`` site; 0: none).
    effect_df
        Degrees of freedom of a Student-t effect prior (heavy tails: strong effects are not shrunk while weak
        ones are); 0 gives a Normal prior.
    independence
        Weight of the penalty on the dependence of ``z_basal`` on the perturbation
        (:func:`~pertpyro.module._independence.basal_dependence`), a factor site ``independence`` in the
        ``cells`` plate while the program trains (``training`` mode with gradients on); 0: off.
    latent_effects
        Whether each target also shifts the latent state the decoder reads (site ``latent_effect``, targets x
        latent, prior of scale ``tau_k`` learned per latent dimension, Student-t with ``effect_df`` degrees of
        freedom); not with ``grn``.
    guide_design, guide_cells
        Per-guide response rates (:mod:`pertpyro.module._guide_rates`, site ``efficacy_guide_rate``): the
        multi-hot targets of each targeting guide's label ``(n_guides, T)`` and its number of training cells
        ``(n_guides,)``; ``None``: per-target rates only. Needs ``efficacy``.
    """

    def __init__(
        self,
        n_genes: int,
        n_targets: int,
        n_batches: int,
        latent_dim: int,
        *,
        n_hidden: int = 128,
        target_frequency: torch.Tensor | None = None,
        gene_bias: torch.Tensor | None = None,
        sparse_effects: bool = True,
        efficacy: bool = True,
        efficacy_targets: torch.Tensor | None = None,
        mask_prior: float = 0.5,
        mask_temperature: float = 0.5,
        effect_df: float = 0.0,
        library_init: tuple[torch.Tensor, torch.Tensor] | None = None,
        grn: GRNPrior | None = None,
        artifacts: str | None = None,
        n_artifact_evidence: int = 0,
        independence: float = 0.0,
        efficacy_prior: str = "uniform",
        latent_effects: bool = False,
        guide_design: torch.Tensor | None = None,
        guide_cells: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.guide_rates = None
        if guide_design is not None:
            if not efficacy:
                raise ValueError("Per-guide response rates need the efficacy block (efficacy=False has no escapers).")
            if guide_cells is None:
                guide_cells = torch.ones(guide_design.shape[0])
            self.guide_rates = GuideRates(guide_design, guide_cells)
        if latent_effects and grn is not None:
            raise ValueError(
                "latent_effects is not available with the grn block: a knockout's effect there is its propagation "
                "through the network, with no latent part."
            )
        self.latent_effects = bool(latent_effects)
        if efficacy_prior not in EFFICACY_PRIORS:
            raise ValueError(f"efficacy_prior must be one of {EFFICACY_PRIORS}, got {efficacy_prior!r}.")
        self.efficacy_prior = efficacy_prior
        if independence < 0:
            raise ValueError(f"independence must be >= 0, got {independence}.")
        self.independence = float(independence)
        self.grn = grn  # the ``grn`` block replaces the free effects (models/_grn.py)
        self.artifact_block = (
            ArtifactBlock(n_genes, artifacts, n_evidence=n_artifact_evidence) if artifacts is not None else None
        )
        self.effect_df = float(effect_df)
        self.n_genes, self.n_targets, self.latent_dim = n_genes, n_targets, latent_dim
        self.sparse_effects, self.use_efficacy = sparse_effects, efficacy
        self.decoder = GeneDecoder(latent_dim, n_genes, n_batches, n_hidden=n_hidden, gene_bias=gene_bias)
        self.log_theta = nn.Parameter(torch.full((n_genes,), math.log(5.0)))
        self.effect_prior_raw_scale = nn.Parameter(torch.full((n_genes,), inverse_softplus(0.3)))
        n_lib = max(n_batches, 1)
        lib_loc, lib_scale = library_init or (torch.full((n_lib,), 7.0), torch.full((n_lib,), 0.5))
        self.library_loc = nn.Parameter(lib_loc.float().clone())
        self.library_raw_scale = nn.Parameter(inverse_softplus(lib_scale.float().clamp_min(0.05)))
        self.library_effect = nn.Parameter(torch.zeros(n_targets))
        self.mask_prior_logit = nn.Parameter(torch.tensor(math.log(mask_prior / (1 - mask_prior))))
        if latent_effects:  # only then: model files without the block keep their parameters
            self.latent_effect_prior_raw_scale = nn.Parameter(
                torch.full((latent_dim,), inverse_softplus(LATENT_EFFECT_PRIOR_INIT))
            )
        if efficacy_prior == "learned":  # only then: model files of the uniform prior keep their parameters
            self.response_raw_concentration = nn.Parameter(inverse_softplus(torch.tensor(FULL_RESPONSE_INIT - 1.0)))
        freq = torch.full((n_targets,), 0.5) if target_frequency is None else target_frequency.float()
        self.register_buffer("target_frequency", freq.clamp(1e-4, 1 - 1e-4))
        self.register_buffer("mask_temperature", torch.tensor(float(mask_temperature)))
        self.register_buffer("zero", torch.tensor(0.0))
        self.register_buffer("one", torch.tensor(1.0))
        # not persistent: checkpoints of models without it load unchanged (it is rebuilt from the settings)
        self.register_buffer("efficacy_targets", None if efficacy_targets is None else efficacy_targets.bool(), False)
        to_pyro_module_(self.decoder)

    # ----- deterministic pieces, shared by the model, the queries and the plain-torch benchmark -----
    def effect_prior_scale(self) -> torch.Tensor:
        """Per-gene prior scale ``sigma_g`` of the effects, shape ``(G,)``."""
        return nn.functional.softplus(self.effect_prior_raw_scale) + 1e-3

    def effect_prior(self) -> dist.Distribution:
        """Prior of one target's effects: per-gene scale ``sigma_g``, Normal or heavy-tailed Student-t."""
        if self.effect_df > 0:
            return SharedScaleStudentT(self.effect_df, self.zero, self.effect_prior_scale())
        return dist.Normal(self.zero, self.effect_prior_scale())

    def latent_effect_prior(self) -> dist.Distribution:
        """Prior of one target's latent effects: scale ``tau_k`` per latent dimension, Normal or Student-t."""
        scale = nn.functional.softplus(self.latent_effect_prior_raw_scale) + 1e-3
        if self.effect_df > 0:
            return SharedScaleStudentT(self.effect_df, self.zero, scale)
        return dist.Normal(self.zero, scale)

    def response_rate_prior(self, n_rows: int) -> dist.Distribution:
        """Prior of ``n_rows`` per-target response rates, batch shape ``(n_rows, 1)`` (targets plate)."""
        if self.efficacy_prior == "uniform":
            return dist.Beta(self.one, self.one).expand([n_rows, 1])
        return dist.Beta(self.response_concentration(), self.one).expand([n_rows, 1])

    def response_concentration(self) -> torch.Tensor:
        """Concentration ``a >= 1`` of the ``Beta(a, 1)`` prior of the response rates (``efficacy_prior="learned"``)."""
        return 1.0 + nn.functional.softplus(self.response_raw_concentration)

    def response_probability(self, perturbation: torch.Tensor, rate: torch.Tensor) -> torch.Tensor:
        """``P(efficacy = 1)`` per cell: the product of the per-target response rates of its targets.

        ``perturbation`` is ``(B, T)``, ``rate`` the ``efficacy_rate`` site's value ``(..., T, 1)``; returns
        ``(..., B)``.
        """
        log_rho = torch.log(rate.clamp(1e-6, 1.0))
        return torch.exp(perturbation @ log_rho).squeeze(-1).clamp(1e-4, 1 - 1e-4)

    def nb_distribution(
        self, logits: torch.Tensor, log_library: torch.Tensor, log_theta_shift: torch.Tensor | None = None
    ) -> NegativeBinomialLogMean:
        """Counts distribution with mean ``exp(log_library) * softmax(logits)`` and per-gene dispersion ``theta``.

        ``log_theta_shift`` (per cell, optional) moves ``log theta`` (a doublet: ``log 2``).
        """
        log_mean = torch.log_softmax(logits, -1) + log_library.unsqueeze(-1)
        log_theta = self.log_theta if log_theta_shift is None else self.log_theta + log_theta_shift.unsqueeze(-1)
        return NegativeBinomialLogMean(log_mean, log_theta)

    def _target_rows(
        self, perturbation: torch.Tensor, targets: TargetSubsample | None
    ) -> tuple[Callable[[], AbstractContextManager], dist.Distribution, torch.Tensor, torch.Tensor]:
        """The rows of the global target sites this run reads, and the ``perturbation`` site over their columns.

        Returns the context of the global target sites (entered once per site), the distribution of the
        ``perturbation`` site and its observed value ``(B, R)``, and the library effects of the ``R`` rows.
        """
        n_cells, T = perturbation.shape[0], self.n_targets
        if targets is None:
            target_plate = global_plates(self, T, self.n_genes)[0]
            design = dist.Bernoulli(self.target_frequency).expand([n_cells, T]).to_event(1)
            return (lambda: target_plate), design, perturbation, self.library_effect
        if self.grn is not None:
            raise ValueError("The grn block reads every target's effect: run it without a targets subsample.")
        return (
            subsampled_target_plate(T, targets),
            _present_design(self.target_frequency, targets.rows, n_cells),
            perturbation[:, targets.rows],
            self.library_effect[targets.rows],
        )

    def forward(
        self,
        counts: torch.Tensor | None,
        perturbation: torch.Tensor,
        batch_index: torch.Tensor,
        library: torch.Tensor,
        idx: torch.Tensor,
        n_cells: int,
        artifact: torch.Tensor | None = None,
        targets: TargetSubsample | None = None,
        artifact_evidence: torch.Tensor | None = None,
        guide: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run the model on a minibatch of cells.

        Parameters
        ----------
        counts
            Raw counts ``(B, G)``, or ``None`` to simulate them.
        perturbation
            Multi-hot targets ``(B, T)``.
        batch_index
            Batch code per cell ``(B,)``.
        library
            Library size per cell ``(B,)`` (total counts observed, or the depth to simulate at).
        idx
            Indices of the minibatch cells among all ``n_cells`` (the ``cells`` plate subsample).
        n_cells
            Number of cells in the data set (the plate size; scales local sites by ``n_cells / B``).
        artifact
            Artifact labels ``(B,)`` (0/1) when the artifact block is on: the ``artifact`` site's values
            (observed mode) or noisy evidence (latent mode); ``None``: inferred (latent) or drawn from the prior.
        targets
            The targets present in the minibatch and the weights of their global terms
            (:func:`pertpyro.module._targets.present_targets`): the global target sites (``effect``, ``effect_mask``,
            ``efficacy_rate``) are drawn for these rows only, on the ``targets`` plate subsampled to them, each row's
            terms weighted so that the ELBO stays an unbiased estimate; the ``perturbation`` site then holds the
            present columns (its density that of the full rows). ``None``: every target (queries and the dense step).
        artifact_evidence
            QC evidence columns of the artifact block ``(B, C)``, or ``None``.
        guide
            Each cell's guide row ``(B,)`` with per-guide rates (``-1``: a control guide or an unknown one); a cell
            with its factual perturbation responds at its guide's rate. ``None``: every cell at its targets' rate.

        Returns
        -------
        Counts ``(B, G)``: the observed ones, or a draw when ``counts`` is ``None``.
        """
        G, T = self.n_genes, self.n_targets
        rows, design, observed, library_effect = self._target_rows(perturbation, targets)
        efficacy_targets = self.efficacy_targets
        if targets is not None and efficacy_targets is not None:
            efficacy_targets = efficacy_targets[targets.rows]
        R = observed.shape[-1]  # rows of the global target sites: all targets, or those of the minibatch
        genes = global_plates(self, T, G)[1]
        # ---- global sites (scale 1; with ``targets``, each present target's terms weighted by ``targets.weight``) ----
        rate = self.one.expand(R, 1)  # no targets (an all-control data set for the artifact model): no sites
        guide_rate = None
        if self.use_efficacy and T:  # per-target response rates: their uncertainty enters every query
            with rows():
                rate = pyro.sample(EFFICACY_RATE, self.response_rate_prior(R))  # (R, 1)
            if self.guide_rates is not None:
                index = None if targets is None else targets.rows
                with self.guide_rates.plate():
                    guide_rate = pyro.sample(EFFICACY_GUIDE_RATE, self.guide_rates.prior(rate, index))  # (n_guides, 1)
                escapes = self.guide_rates.escapes(self.efficacy_targets)
                if escapes is not None:  # guides of targets without escapers: every cell responds
                    guide_rate = torch.where(escapes, guide_rate, self.one)
                rate = self.guide_rates.target_rates(rate, guide_rate, index)  # (R, 1): under an intervention
            if efficacy_targets is not None:  # the other targets: every cell responds
                rate = torch.where(efficacy_targets.unsqueeze(-1), rate, self.one)
        if self.grn is not None:
            effect = self.grn()  # (T, G): knockouts propagated through the sampled network (models/_grn.py)
        else:
            effect = self.zero.expand(0, G)  # no targets (an all-control data set for the artifact model): no sites
            with rows(), genes:
                if T:
                    effect = pyro.sample(EFFECT, self.effect_prior().expand([R, G]))  # (R, G)
                if T and self.sparse_effects:
                    mask = pyro.sample(
                        EFFECT_MASK,
                        dist.RelaxedBernoulliStraightThrough(
                            self.mask_temperature, logits=self.mask_prior_logit.expand([R, G])
                        ),
                    )  # (R, G), hard 0/1 values
                    effect = effect * mask
        latent_shift = None
        if self.latent_effects and T:
            with rows(), latent_plate(self, self.latent_dim):
                latent_shift = pyro.sample(LATENT_EFFECT, self.latent_effect_prior().expand([R, self.latent_dim]))
        artifacts = self.artifact_block
        embedding = artifacts.sample_embedding() if artifacts is not None else None  # (2, G)
        # ---- local sites (scale n_cells / B) ----
        with pyro.plate(CELLS_PLATE, n_cells, subsample=idx, dim=-1):
            z = pyro.sample(Z_BASAL, dist.Normal(self.zero, 1.0).expand([self.latent_dim]).to_event(1))  # (B, K)
            d = pyro.sample(PERTURBATION, design, obs=observed)  # (B, R)
            if self.independence > 0 and self.training and torch.is_grad_enabled():
                pyro.factor(INDEPENDENCE, -self.independence * basal_dependence(z, d))
            a, kind = artifacts.sample_cells(artifact, idx.shape[0]) if artifacts is not None else (None, None)
            if a is not None and artifacts.n_evidence and artifact_evidence is not None:
                artifacts.observe_evidence(a, kind, artifact_evidence)
            base = self.decoder(z, batch_index)  # (B, G)
            if latent_shift is None:
                shifted = base + d @ effect  # (B, G): logits if the knockout took
            else:  # the knockout also moves the decoder's input
                shifted = self.decoder(z + d @ latent_shift, batch_index) + d @ effect  # (B, G)
            library_shift = d @ library_effect  # (B,)
            factual = d is observed  # not intervened (poutine.do hands back another tensor): no depth change
            factual_library_shift = library_shift if factual else observed @ library_effect  # (B,)
            if self.use_efficacy:
                response = self.response_probability(d, rate)  # (B,)
                if guide_rate is not None and guide is not None and factual:  # each cell's own guide
                    response = GuideRates.cell_probability(guide_rate, guide, response)
                responds = pyro.sample(
                    EFFICACY, MarkedBernoulli(response), infer={"enumerate": "parallel"}
                )  # (B,) or (2, 1, 1)
                if is_enumerated_support(responds):  # both arms, stacked: no select, no reductions
                    logits = torch.stack([base, shifted]).reshape(responds.shape[:-1] + base.shape)  # (2, 1, B, G)
                else:
                    logits = torch.where(responds.unsqueeze(-1) > 0.5, shifted, base)  # (..., B, G)
                library_shift = responds * library_shift
                factual_library_shift = library_shift if factual else responds * factual_library_shift
            else:
                logits = shifted
            log_library = torch.log(library)
            lib_loc = self.library_loc[batch_index] + library_shift
            lib_scale = nn.functional.softplus(self.library_raw_scale[batch_index]) + 1e-3
            library_dist, theta_shift = dist.Normal(lib_loc, lib_scale), None
            if a is not None:  # artifact offset on the logits; artifact cells' depths shift and spread
                logits = artifacts.artifact_logits(logits, base, a, kind, embedding)
                library_dist = artifacts.library(lib_loc, lib_scale, a, kind)
                theta_shift = artifacts.log_theta_shift(a, kind)
            pyro.sample(LIBRARY, library_dist, obs=log_library)
            # The depth the counts are drawn at: the observed one, moved by the knockout's library effect when
            # poutine.do changes the perturbation (the cell keeps its own depth noise: abduction of the library).
            log_depth = log_library if factual else log_library + library_shift - factual_library_shift  # (..., B)
            counts_dist = self.nb_distribution(logits, log_depth, theta_shift)
            return pyro.sample(COUNTS, counts_dist.to_event(1), obs=counts)


class PerturbationGuide(PyroModule):
    """Variational family of :class:`PerturbationProgram`.

    Amortised Normal for ``z_basal`` (with ``latent_effects``: the encoder's location minus the drawn latent shift
    of the cell's targets); logit-normal for ``efficacy_rate``; mean-field Normal for ``effect`` and ``latent_effect``; relaxed Bernoulli (straight-through) for
    ``effect_mask``. ``efficacy`` has no guide: it is summed out exactly by enumeration.

    Parameters
    ----------
    program
        The model whose sites this guide covers.
    n_batches
        Number of batch categories.
    n_hidden
        Hidden width of the encoder.
    n_layers
        Number of hidden layers of the encoder.
    encode_perturbation
        Whether the encoder sees each cell's targets.
    """

    def __init__(
        self,
        program: PerturbationProgram,
        n_batches: int,
        *,
        n_hidden: int = 128,
        n_layers: int = 1,
        encode_perturbation: bool = True,
    ):
        super().__init__()
        G, T = program.n_genes, program.n_targets
        self.sparse_effects = program.sparse_effects
        self.encoder = BasalEncoder(
            G,
            n_batches if n_batches > 1 else 0,
            program.latent_dim,
            n_targets=T if encode_perturbation else 0,
            n_hidden=n_hidden,
            n_layers=n_layers,
        )
        self.effect_loc = nn.Parameter(torch.zeros(T, G))
        self.effect_raw_scale = nn.Parameter(torch.full((T, G), inverse_softplus(0.05)))
        self.mask_logit = nn.Parameter(torch.full((T, G), 2.0))
        self.latent_effects = program.latent_effects
        if program.latent_effects:  # only then: model files without the block keep their parameters
            self.latent_effect_loc = nn.Parameter(torch.zeros(T, program.latent_dim))
            self.latent_effect_raw_scale = nn.Parameter(torch.full((T, program.latent_dim), inverse_softplus(0.05)))
        self.use_efficacy = program.use_efficacy
        self.efficacy_loc = nn.Parameter(torch.full((T,), EFFICACY_INIT_LOGIT))
        self.efficacy_raw_scale = nn.Parameter(torch.full((T,), inverse_softplus(0.1)))
        self.guide_rates = None
        if program.guide_rates is not None:  # only then: model files without per-guide rates keep their parameters
            self.guide_rates = GuideRatesGuide(program.guide_rates.n_guides)
        self.register_buffer("mask_temperature", program.mask_temperature.clone())
        self.grn = None if program.grn is None else GRNGuide(program.grn)
        self.artifact_guide = ArtifactGuide(G) if program.artifact_block is not None else None
        to_pyro_module_(self.encoder)

    def efficacy_distribution(self, index: torch.Tensor | None = None) -> dist.Distribution:
        """Posterior of the per-target response rates: logit-normal, batch shape ``(T, 1)`` (targets plate).

        ``index``: only these targets' rates, ``(P, 1)``.
        """
        loc, raw_scale = self.efficacy_loc, self.efficacy_raw_scale
        if index is not None:
            loc, raw_scale = loc[index], raw_scale[index]
        scale = nn.functional.softplus(raw_scale) + 1e-4
        base = dist.Normal(loc.unsqueeze(-1), scale.unsqueeze(-1))
        return dist.TransformedDistribution(base, [dist.transforms.SigmoidTransform()])

    def efficacy_median(self) -> torch.Tensor:
        """Posterior median of the per-target response rates, ``(T,)``."""
        return torch.sigmoid(self.efficacy_loc)

    def efficacy_medians(self) -> dict[str, torch.Tensor]:
        """Posterior medians of the response-rate sites, each ``(rows, 1)``: per target, and per guide when on."""
        out = {EFFICACY_RATE: self.efficacy_median().detach().unsqueeze(-1)}
        if self.guide_rates is not None:
            out[EFFICACY_GUIDE_RATE] = self.guide_rates.median().detach().unsqueeze(-1)
        return out

    def basal_mean(self, counts: torch.Tensor, batch_index: torch.Tensor, perturbation: torch.Tensor) -> torch.Tensor:
        """Posterior mean of ``z_basal`` of cells ``(B, K)``: the encoder's location, less the mean latent shift."""
        loc, _ = self.encoder(counts, batch_index, perturbation)
        if self.latent_effects:
            loc = loc - perturbation.to(loc.dtype) @ self.latent_effect_loc
        return loc

    def effect_scale(self) -> torch.Tensor:
        """Posterior scale of the effects, ``(T, G)``."""
        return nn.functional.softplus(self.effect_raw_scale) + EFFECT_SCALE_FLOOR

    def forward(
        self,
        counts: torch.Tensor | None,
        perturbation: torch.Tensor,
        batch_index: torch.Tensor,
        library: torch.Tensor,
        idx: torch.Tensor,
        n_cells: int,
        artifact: torch.Tensor | None = None,
        targets: TargetSubsample | None = None,
        artifact_evidence: torch.Tensor | None = None,
        guide: torch.Tensor | None = None,
    ) -> None:
        """Draw the latent sites; same signature as the model (``counts`` is required here).

        With ``targets``, the global target sites are drawn for the present targets only, their parameters read
        as rows with sparse gradients (``torch.optim.SparseAdam`` updates just those rows).
        """
        if counts is None:
            raise ValueError("The guide needs observed counts to infer each cell's basal state.")
        T, G = self.effect_loc.shape
        target_plate, genes = global_plates(self, T, G)
        if targets is not None and self.grn is not None:
            raise ValueError("The grn block reads every target's effect: run it without a targets subsample.")
        rows = (lambda: target_plate) if targets is None else subsampled_target_plate(T, targets)
        index = None if targets is None else targets.rows
        if self.use_efficacy and T:
            with rows():
                pyro.sample(EFFICACY_RATE, self.efficacy_distribution(index))
            if self.guide_rates is not None:
                with self.guide_rates.plate():
                    pyro.sample(EFFICACY_GUIDE_RATE, self.guide_rates.distribution())
        if self.grn is not None:
            self.grn()
        else:
            with rows(), genes:
                if T:
                    loc, raw_scale = _rows(self.effect_loc, index), _rows(self.effect_raw_scale, index)
                    pyro.sample(EFFECT, dist.Normal(loc, nn.functional.softplus(raw_scale) + EFFECT_SCALE_FLOOR))
                if T and self.sparse_effects:
                    pyro.sample(
                        EFFECT_MASK,
                        dist.RelaxedBernoulliStraightThrough(
                            self.mask_temperature, logits=_rows(self.mask_logit, index)
                        ),
                    )
        latent_shift = None
        if self.latent_effects and T:
            with rows(), latent_plate(self, self.latent_effect_loc.shape[1]):
                loc, raw_scale = _rows(self.latent_effect_loc, index), _rows(self.latent_effect_raw_scale, index)
                scale = nn.functional.softplus(raw_scale) + EFFECT_SCALE_FLOOR
                latent_shift = pyro.sample(LATENT_EFFECT, dist.Normal(loc, scale))  # (R, K)
        if self.artifact_guide is not None:
            self.artifact_guide()
        with pyro.plate(CELLS_PLATE, n_cells, subsample=idx, dim=-1):
            design = perturbation if index is None else perturbation[:, index]
            loc, scale = self.encoder(counts, batch_index, design, index)
            if latent_shift is not None:  # the encoder reads the cell's state; its basal state lacks the shift
                loc = loc - design.to(loc.dtype) @ latent_shift
            pyro.sample(Z_BASAL, dist.Normal(loc, scale).to_event(1))
