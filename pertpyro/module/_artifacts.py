"""The technical-artifact block (CRADLE-VAE's idea as sample sites): ``artifact``, ``artifact_embedding``.

Generative story, added to :class:`pertpyro.module._program.PerturbationProgram` when ``artifacts`` is set::

    artifact_embedding   ~ Normal(0, I_G)                        global (one event over genes): A
    for each cell n:
        artifact[n]       ~ Bernoulli(pi_a)                      a_n: observed labels, or latent and enumerated
        artifact_label[n] ~ Bernoulli(a_n ? 1 - eps_1 : eps_0)   (latent mode) the given, noisy label
        artifact_kind[n]  ~ Bernoulli(w)                           k_n: doublet (0) or low-quality (1), enumerated
        artifact_evidence[n, c] ~ Normal(m_{s_n c}, v_{s_n c})     (with evidence) state s_n: clean, doublet or
                                                                   low-quality; e.g. logit of Scrublet's score
        library[n]        ~ Normal(loc + a_n delta_k, scale exp(a_n kappa_k))
        x[n]              ~ NB(..., theta * (1 + s) ** (a_n [k_n = doublet]))   s in (0, 1): a sum of two cells
        logits[n]         = decoder(z_basal[n]) + shift[n] + a_n [k_n = low-quality] A
                            (a doublet: log of (softmax(decoder + shift) + softmax(decoder)) / 2 instead)

**Where the artifact enters.** ``a_n * A`` is an offset on the decoder's gene logits, not an input of the decoder
network: removing it (``do(artifact=0)``) leaves the cell's basal state and its perturbation effect exactly as they
were, so the cleaned cell is the same cell minus a technical shift of composition (a dying cell's loss of
cytoplasmic, non-mitochondrial RNA is such a shift). Fed to the decoder network instead, the artifact could mix
with the biology through its nonlinearity, and "the same cell without the artifact" would no longer be well defined.

**Kinds and library.** Artifacts differ in both composition and depth, in both directions: a doublet holds two
cells' molecules (depth ``log 2`` higher, fixed; counts less overdispersed than one cell's at that depth), a
low-quality cell lost most of its cytoplasmic ones (learned negative shift, widened; composition offset ``A``). So
``a_n`` comes with an enumerated kind ``k_n``, each kind with its own depth law; ``do(artifact=0)`` removes whichever
applies. A doublet has no composition offset: two random cells mixed look, on average, like a cell the basal latent
already describes (:meth:`ArtifactBlock.logit_offset`). The depth is strong evidence for ``a_n``.

**Latent mode: enumeration, not a relaxed Bernoulli.** ``a_n`` has two values, so it is summed out exactly by
``TraceEnum_ELBO`` (like ``efficacy``; the two enumerated dimensions sit left of the two plates): no
reparameterisation bias, no temperature to tune, no encoder ``q(a_n | x_n)`` to amortise, and the posterior
``P(a_n = 1 | x_n, label_n)`` is exact given the basal state, which :func:`artifact_posterior` integrates by
importance sampling. The given labels are
noisy evidence through the flip rates ``eps_0`` (a clean cell labelled an artifact) and ``eps_1`` (an artifact
labelled clean), learned and capped at 0.4 so that a label always says more than a coin flip; mislabelled cells are
thus corrected by their counts and depth. Without labels (``None``), ``a_n`` is inferred from the data alone.

**QC evidence.** Per-cell QC summaries that the counts do not hold (Scrublet's doublet score compares a cell with
simulated doublets of its neighbours) enter as the observed site ``artifact_evidence``: each column (transformed to
an unbounded scale, :mod:`pertpyro.data._artifact_evidence`) is Normal with a location and scale per state (clean,
doublet, low-quality), all learned. The relation of the score to the artifact state is learned, not thresholded:
a score that separates the states weighs in as much as it separates them, one that does not is ignored. Missing
values (a cell Scrublet could not score) are left out of the likelihood.

**Observed mode.** ``artifact`` is observed at the labels; ``do(artifact=0)`` still applies (Pyro splits the node:
the factual ``artifact`` stays observed and the downstream sites see ``artifact__CF``'s value 0).
"""

from __future__ import annotations

import math
from typing import Literal, cast

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import PyroModule
from torch import nn

from pertpyro.module._enumerate import cell_log_joint, enumerated_sites
from pertpyro.module._types import GuideLike
from pertpyro.module.sites import (
    ARTIFACT,
    ARTIFACT_EMBEDDING,
    ARTIFACT_EVIDENCE,
    ARTIFACT_KIND,
    ARTIFACT_LABEL,
    CELLS_PLATE,
    EFFECT,
    EFFECT_MASK,
    Z_BASAL,
)

ArtifactMode = Literal["observed", "latent"]
"""The two modes of the artifact block: labels observed, or labels as noisy evidence of a latent state."""
ARTIFACT_MODES: tuple[ArtifactMode, ...] = ("observed", "latent")
LOG2 = math.log(2.0)
MAX_FLIP = 0.4
"""Upper bound of the learned label flip rates (a label must stay better than a coin flip)."""
FLIP_STEP = 10.0
"""Step-size multiplier of the flip rates' logits (they are stored divided by it: Adam's step is about ``lr`` in the
stored units). From 0.02 they must travel about 3 logits; at plain step sizes they stay near their start for the
few hundred steps of a fit, and the labels are over-trusted."""

EVIDENCE_STEP = 5.0
"""Step-size multiplier of the evidence laws' parameters (stored divided by it, like :data:`FLIP_STEP`): the states'
locations must part by a logit or more within the few hundred steps of a fit."""


def check_artifact_mode(mode: str | None) -> ArtifactMode | None:
    """``mode`` if it is ``None``, ``"observed"`` or ``"latent"``; a ``ValueError`` otherwise."""
    if mode is not None and mode not in ARTIFACT_MODES:
        raise ValueError(f"artifacts must be None, 'observed' or 'latent', got {mode!r}.")
    return cast(ArtifactMode | None, mode)


class ArtifactBlock(PyroModule):
    """Model side of the artifact block: prior, label noise, library and logit terms (module docstring).

    Parameters
    ----------
    n_genes
        Number of genes (length of ``artifact_embedding``).
    mode
        ``"observed"`` (labels are the ``artifact`` site's values) or ``"latent"`` (labels are noisy evidence).
    prior
        Initial prior probability that a cell is an artifact (learned).
    flip
        Initial flip rates of the labels (latent mode; learned, with larger steps: :data:`FLIP_STEP`). Small: the
        labels are trusted at first, so the artifact kinds are learned from the labelled cells, and the rates rise as
        the counts contradict labels. A large start lets a kind drift onto clean cells.
    embedding_scale
        Prior scale of the entries of ``artifact_embedding``.
    n_evidence
        Number of QC evidence columns (``artifact_evidence``; 0: none).
    """

    def __init__(
        self,
        n_genes: int,
        mode: ArtifactMode,
        *,
        prior: float = 0.1,
        flip: float = 0.02,
        embedding_scale: float = 1.0,
        n_evidence: int = 0,
    ) -> None:
        super().__init__()
        self.n_evidence = int(n_evidence)
        if self.n_evidence:  # only then: models saved without evidence keep their parameters
            self.evidence_loc = nn.Parameter(torch.zeros(3, self.n_evidence))  # rows: clean, doublet, low-quality
            self.evidence_raw_scale = nn.Parameter(torch.zeros(3, self.n_evidence))
        self.embedding_scale = float(embedding_scale)
        self.mode, self.n_genes = check_artifact_mode(mode), n_genes
        self.prior_logit = nn.Parameter(torch.tensor(math.log(prior / (1 - prior))))
        self.flip_raw = nn.Parameter(torch.full((2,), math.log(flip / (MAX_FLIP - flip)) / FLIP_STEP))
        self.library_shift = nn.Parameter(torch.tensor(0.0))  # low-quality kind: -log 2 - softplus(.) ~ -1.39
        self.library_log_inflation = nn.Parameter(torch.tensor(0.0))
        self.kind_logit = nn.Parameter(torch.tensor(0.0))
        self.doublet_dispersion_logit = nn.Parameter(torch.tensor(0.0))
        self.register_buffer("zero", torch.tensor(0.0))

    @property
    def flip_logit(self) -> torch.Tensor:
        """Logits of the flip rates relative to ``MAX_FLIP`` (stored divided by :data:`FLIP_STEP`)."""
        return FLIP_STEP * self.flip_raw

    def flip_rates(self) -> torch.Tensor:
        """``(eps_0, eps_1)``: P(label 1 | clean) and P(label 0 | artifact)."""
        return MAX_FLIP * torch.sigmoid(self.flip_logit)

    def sample_embedding(self) -> torch.Tensor:
        """The global ``artifact_embedding`` site ``A``, shape ``(G,)``: the low-quality kind's logit offset.

        Call outside the cells plate. One event (not a second "genes" plate: a plate name appears once per trace).
        """
        return pyro.sample(
            ARTIFACT_EMBEDDING, dist.Normal(self.zero, self.embedding_scale).expand([self.n_genes]).to_event(1)
        )

    def sample_cells(self, labels: torch.Tensor | None, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-cell sites ``artifact``, ``artifact_kind`` (and ``artifact_label`` in latent mode).

        Call inside the cells plate. Returns ``a_n`` and ``k_n``, each ``(n,)`` or enumerated ``(2, 1, ..., 1)``.
        """
        prior = dist.Bernoulli(logits=self.prior_logit.expand([n]))
        if self.mode == "observed":
            a = pyro.sample(ARTIFACT, prior, obs=labels)
        else:
            a = pyro.sample(ARTIFACT, prior, infer={"enumerate": "parallel"})
            if labels is not None:
                eps = self.flip_rates()
                label_prob = torch.where(a > 0.5, 1 - eps[1], eps[0])
                pyro.sample(ARTIFACT_LABEL, dist.Bernoulli(probs=label_prob), obs=labels)
        kind = pyro.sample(
            ARTIFACT_KIND, dist.Bernoulli(logits=self.kind_logit.expand([n])), infer={"enumerate": "parallel"}
        )
        return a, kind

    def init_evidence(self, values: np.ndarray) -> None:
        """Start every state's evidence law at the robust location and spread of the columns (median, scaled MAD).

        The states then part as the depth and counts assign cells to them; a start apart from the data (e.g. a
        doublet location above the median) would assert a direction the evidence may not have.
        """
        with torch.no_grad():
            for c in range(self.n_evidence):
                column = values[:, c][np.isfinite(values[:, c])]
                median = float(np.median(column)) if len(column) else 0.0
                mad = 1.4826 * float(np.median(np.abs(column - median))) if len(column) else 1.0
                self.evidence_loc[:, c] = median / EVIDENCE_STEP
                self.evidence_raw_scale[:, c] = math.log(math.expm1(max(mad, 0.05))) / EVIDENCE_STEP

    def evidence_laws(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Location and scale of each evidence column per state (clean, doublet, low-quality), ``(3, C)`` each."""
        loc = EVIDENCE_STEP * self.evidence_loc
        return loc, nn.functional.softplus(EVIDENCE_STEP * self.evidence_raw_scale) + 1e-3

    def observe_evidence(self, a: torch.Tensor, kind: torch.Tensor, evidence: torch.Tensor) -> None:
        """The ``artifact_evidence`` term, ``(B, C)`` (``NaN``: missing, left out); call in the cells plate.

        State of each cell: clean (``a = 0``), doublet (``a = 1, k = 0``) or low-quality (``a = 1, k = 1``); each
        column is Normal with that state's location and scale. A factor (the log density of the present values),
        so that cells with missing values need no masked site under enumeration.
        """
        state = (a * (1.0 + kind)).long()  # (...) or enumerated; values 0, 1, 2
        loc, scale = self.evidence_laws()
        present = torch.isfinite(evidence)
        values = torch.where(present, evidence, torch.zeros_like(evidence))
        log_p = dist.Normal(loc[state], scale[state]).log_prob(values)  # (..., B, C)
        pyro.factor(ARTIFACT_EVIDENCE, torch.where(present, log_p, torch.zeros_like(log_p)).sum(-1))

    def log_theta_shift(self, a: torch.Tensor, kind: torch.Tensor) -> torch.Tensor:
        """Shift of the NB ``log theta`` per cell: ``log(1 + s)`` for a doublet, 0 otherwise; ``s`` in (0, 1) learned.

        A doublet's counts are the sum of two cells' independent NB counts, of means ``r mu`` and ``(1 - r) mu``
        (``r``: one cell's share of the molecules of a gene) and inverse dispersion ``theta`` each: mean ``mu``,
        variance ``mu + (r^2 + (1 - r)^2) mu^2 / theta``, i.e. the inverse dispersion of the sum is
        ``theta / (r^2 + (1 - r)^2)``, between ``theta`` and ``2 theta`` (equal shares). The shares vary with the two
        cells' depths and compositions, so the factor ``1 + s`` is learned within those bounds. Fixed at 2 (equal
        shares) it made the counts of clean cells look like doublets' as often as doublets' own (simulator, seeds
        0-2: artifact AUROC 0.974 / 0.956 / 0.963; learned, it settles near 1.4 and gives 0.982 / 0.967 / 0.972).
        Less overdispersed than a single cell of the same depth: evidence of a doublet.
        """
        return a * (1.0 - kind) * torch.log1p(torch.sigmoid(self.doublet_dispersion_logit))

    @staticmethod
    def logit_offset(a: torch.Tensor, kind: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        """``a_n [k_n = low-quality] A`` on the gene logits, ``(..., n, G)``: a doublet has no offset.

        A doublet of two random cells has the composition of a mixture of two cells' profiles, which the basal
        latent already spans about as well as one cell's: there is no systematic composition shift to learn, and a
        free doublet offset (as the block had before) fits whatever the clean model fits worst instead (on the
        simulator, seeds 0-2, 20% flipped labels: artifact AUROC 0.982 / 0.967 / 0.972 with it, 0.982 / 0.975 /
        0.976 without).
        """
        return (a * kind).unsqueeze(-1) * embedding

    def artifact_logits(
        self, logits: torch.Tensor, base: torch.Tensor, a: torch.Tensor, kind: torch.Tensor, embedding: torch.Tensor
    ) -> torch.Tensor:
        """Gene logits of each cell given its artifact state: a doublet's perturbation effect diluted, offsets added.

        ``logits`` are the cell's logits with its perturbation effect (where it responds), ``base`` those without.
        A doublet holds the molecules of the perturbed cell and of a random partner, which (on average over
        partners) carries no effect of this guide: its expected composition is the mixture
        ``(softmax(logits) + softmax(base)) / 2``, the perturbation's shift at about half strength. Treated as a
        full-effect cell (as before), every doublet pulled the fitted effects and response rates towards zero. A
        low-quality cell gets the offset ``A`` (:meth:`logit_offset`). Under ``do(artifact=0)`` the logits are the
        clean cell's, with the full effect.
        """
        doublet = (a * (1.0 - kind)).unsqueeze(-1) > 0.5
        mixed = torch.logaddexp(torch.log_softmax(logits, -1), torch.log_softmax(base, -1))
        return torch.where(doublet, mixed, logits) + self.logit_offset(a, kind, embedding)

    def _shifts(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-depth shift and log widening of the two kinds, ``(2,)`` each.

        Kind 0, a doublet, holds two cells' molecules: its depth is fixed at ``log 2`` above a cell's, and the sum
        of two independent depths spreads about ``1/sqrt(2)`` as much (relative to its mean). Kind 1, a low-quality
        cell, lost at least half its molecules: a learned shift below ``-log 2`` and a learned widening of at most 2.
        These bounds keep the kinds identified: free, a kind drifts onto clean cells (a wide component that fits
        whatever the clean model fits worst).
        """
        shift = torch.stack([self.zero + LOG2, -LOG2 - nn.functional.softplus(self.library_shift)])
        inflation = torch.stack([self.zero - 0.5 * LOG2, LOG2 * torch.sigmoid(self.library_log_inflation)])
        return shift, inflation

    def _components(self, loc: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Locations and scales of the three depth components (clean, doublet, low-quality), ``(..., 3)``."""
        shift, inflation = self._shifts()
        shift = torch.cat([self.zero.reshape(1), shift])
        inflation = torch.cat([self.zero.reshape(1), inflation])
        return loc.unsqueeze(-1) + shift, scale.unsqueeze(-1) * torch.exp(inflation)

    def kind_logits(self) -> torch.Tensor:
        """Log prior weights of the two artifact kinds, ``(2,)``."""
        return nn.functional.logsigmoid(torch.stack([-self.kind_logit, self.kind_logit]))

    def library(self, loc: torch.Tensor, scale: torch.Tensor, a: torch.Tensor, kind: torch.Tensor) -> dist.Normal:
        """Distribution of the log library given ``a_n`` and the artifact kind ``k_n`` (clean: ``Normal(loc, scale)``)."""
        shifts, inflations = self._shifts()
        shift = torch.where(kind > 0.5, shifts[1], shifts[0])
        inflation = torch.where(kind > 0.5, inflations[1], inflations[0])
        return dist.Normal(loc + a * shift, scale * torch.exp(a * inflation))

    def counterfactual_log_library(
        self,
        log_library: torch.Tensor,
        loc: torch.Tensor,
        scale: torch.Tensor,
        factual: torch.Tensor,
        counterfactual: torch.Tensor,
    ) -> torch.Tensor:
        """Log depth of each cell had its artifact state been ``counterfactual`` instead of ``factual``.

        Abduction of the depth noise: the cell's depth component is the clean one for a clean cell and the most
        responsible artifact component for an artifact; its standardised residual under that component is kept and
        mapped through the counterfactual state's component (an artifact made clean: the clean one; a clean cell
        made an artifact: the heavier artifact component). ``loc``, ``scale``: the cell's clean location and scale
        (a perturbation's library effect stays in the residual).
        """
        locs, scales = self._components(loc, scale)  # (n, 3)
        log_resp = dist.Normal(locs[:, 1:], scales[:, 1:]).log_prob(log_library.unsqueeze(-1)) + self.kind_logits()
        artifact_component = 1 + log_resp.argmax(-1)
        heavier = 1 + self.kind_logits().argmax()
        source = torch.where(factual > 0.5, artifact_component, 0)
        target = torch.where(counterfactual > 0.5, torch.where(factual > 0.5, source, heavier), 0)
        rows = torch.arange(len(log_library))
        residual = (log_library - locs[rows, source]) / scales[rows, source]
        return locs[rows, target] + residual * scales[rows, target]


class ArtifactGuide(PyroModule):
    """Guide side: mean-field Normal for ``artifact_embedding`` (``artifact`` is observed or enumerated)."""

    def __init__(self, n_genes: int) -> None:
        super().__init__()
        self.n_genes = n_genes
        self.loc = nn.Parameter(torch.zeros(n_genes))
        self.raw_scale = nn.Parameter(torch.full((n_genes,), -3.0))

    def forward(self) -> torch.Tensor:
        """Draw ``artifact_embedding`` (call outside the cells plate)."""
        scale = nn.functional.softplus(self.raw_scale) + 1e-5
        return pyro.sample(ARTIFACT_EMBEDDING, dist.Normal(self.loc, scale).to_event(1))


def robust_library_init(program: torch.nn.Module, log_library: np.ndarray, batch_index: np.ndarray) -> None:
    """Start the clean cells' log-library location and scale at the per-batch median and scaled MAD.

    The mean and sd would include the artifacts' atypical depths (both tails), widening the clean Normal so much
    that depth no longer tells an artifact from a clean cell and the artifact components drift away.
    """
    with torch.no_grad():
        for b in range(program.library_loc.shape[0]):
            values = log_library[batch_index == b] if np.any(batch_index == b) else log_library
            median = float(np.median(values))
            mad = 1.4826 * float(np.median(np.abs(values - median)))
            program.library_loc[b] = median
            program.library_raw_scale[b] = math.log(math.expm1(max(mad, 0.05)))


def posterior_mean_globals(program: torch.nn.Module, guide: GuideLike) -> dict[str, torch.Tensor]:
    """The global sites the per-cell queries condition on: their posterior means (a mask: inclusion > 1/2).

    Shared by the IWELBO and :func:`artifact_posterior`, so that both weigh the cells' states under one model.
    Sites of other blocks (``grn``) are drawn from the guide with each particle instead.
    """
    fixed = {}
    if program.n_targets and program.use_efficacy:  # response rates (per target, per guide): posterior medians
        fixed.update(guide.efficacy_medians())
    if program.n_targets and program.grn is None:
        fixed[EFFECT] = guide.effect_loc.detach()
        if program.sparse_effects:
            fixed[EFFECT_MASK] = (guide.mask_logit.detach() > 0).float()
    if getattr(guide, "artifact_guide", None) is not None:
        fixed[ARTIFACT_EMBEDDING] = guide.artifact_guide.loc.detach()
    return fixed


def guide_draw(program: torch.nn.Module, guide: GuideLike, args: tuple) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One draw of the latents from the guide (globals at their means) and ``log q(z_basal | x)`` per cell."""
    guide_trace = poutine.trace(guide).get_trace(*args)
    latents = {
        name: node["value"]
        for name, node in guide_trace.nodes.items()
        if node["type"] == "sample" and not node["is_observed"] and name != CELLS_PLATE
    }
    z_site = guide_trace.nodes[Z_BASAL]
    return latents | posterior_mean_globals(program, guide), z_site["fn"].log_prob(z_site["value"])


def _artifact_log_joint(program: torch.nn.Module, args: tuple, latents: dict[str, torch.Tensor]) -> torch.Tensor:
    """``log p(s, x, l, label, z | globals)`` per cell for the states clean, doublet, low-quality: ``(3, B)``.

    Other discrete states (``efficacy``) are summed; the clean state sums over the (then idle) artifact kind.
    """
    sites = enumerated_sites(program, labels_observed=False)  # a is enumerated even where labels are observed
    joint = cell_log_joint(program, args, latents, sites)
    joint = joint.movedim((sites.index(ARTIFACT), sites.index(ARTIFACT_KIND)), (0, 1))
    joint = torch.logsumexp(joint.reshape(2, 2, -1, joint.shape[-1]), 2)  # (a, kind, B)
    return torch.stack([torch.logsumexp(joint[0], 0), joint[1, 0], joint[1, 1]])


ArtifactKind = Literal["any", "doublet", "low_quality"]
ARTIFACT_KINDS: tuple[ArtifactKind, ...] = ("any", "doublet", "low_quality")


def _state_probability(log_joint: torch.Tensor, kind: str) -> torch.Tensor:
    """``P(artifact of kind | ...)`` from the ``(3, B)`` log joint of the states."""
    post = torch.softmax(log_joint, 0)
    return post[1:].sum(0) if kind == "any" else post[ARTIFACT_KINDS.index(cast(ArtifactKind, kind))]


@torch.no_grad()
def artifact_posterior(
    program: torch.nn.Module,
    guide: GuideLike,
    args: tuple,
    *,
    n_samples: int = 30,
    latents: dict[str, torch.Tensor] | None = None,
    kind: ArtifactKind = "any",
) -> torch.Tensor:
    """Posterior ``P(artifact = 1 | x, library, label, evidence)`` of each cell of one standalone minibatch.

    The artifact state ``a`` (and ``artifact_kind``, ``efficacy``) is summed exactly; the basal state ``z`` is
    integrated by importance sampling with the guide as proposal (globals at their posterior means)::

        P(a | x) ∝ sum_k p(a, x, l, label, z_k) / q(z_k | x),   z_k ~ q(z | x),  k = 1..n_samples

    (the two sums are the IWELBO's importance weights split by ``a``; consistent as ``n_samples`` grows). Averaging
    the conditional posteriors ``P(a | x, z_k)`` instead would weigh each ``z_k`` by the guide, which was fitted
    to clean and artifact cells alike, not by how well it explains the cell under each state.

    Parameters
    ----------
    program, guide
        The trained model and guide (the program has an artifact block).
    args
        Model arguments of the cells (:func:`pertpyro.data._loader.standalone_args`).
    n_samples
        Importance samples of ``z``.
    latents
        One draw of the latent sites to condition on instead: the exact ``P(a | x, z, globals)`` (``n_samples`` is
        then ignored), as used by the abduction of a counterfactual.
    kind
        ``"any"``: an artifact of either kind; ``"doublet"`` or ``"low_quality"``: an artifact of that kind.

    Returns
    -------
    Tensor ``(B,)``.
    """
    if kind not in ARTIFACT_KINDS:
        raise ValueError(f"kind must be one of {ARTIFACT_KINDS}, got {kind!r}.")
    if latents is not None:
        return _state_probability(_artifact_log_joint(program, args, latents), kind)
    weights = []
    for _ in range(n_samples):
        draw, log_q = guide_draw(program, guide, args)
        weights.append(_artifact_log_joint(program, args, draw) - log_q)
    return _state_probability(torch.logsumexp(torch.stack(weights), 0), kind)


def artifact_action(program: torch.nn.Module, value: object) -> torch.Tensor:
    """The tensor of ``do={"artifact": value}``: 0 (clean) or 1; a ``ValueError`` otherwise or without the block."""
    if getattr(program, "artifact_block", None) is None:
        raise ValueError("This model has no artifact block: build it with artifacts='observed' or 'latent'.")
    if isinstance(value, bool) or value not in (0, 1):
        raise ValueError(f"artifact can be set to 0 or 1, got {value!r}.")
    return torch.tensor(float(value))


__all__ = [
    "ARTIFACT_KINDS",
    "ArtifactBlock",
    "ArtifactGuide",
    "artifact_action",
    "artifact_posterior",
    "check_artifact_mode",
    "robust_library_init",
]
