"""Average treatment effects of thousands of labels from one table per gene of the population's expected expression.

For one posterior draw, the model's mean of cell ``c``, gene ``g`` under label ``l`` (its responders) is
``D_c exp(lambda_l) * exp(u_cg + e_lg - zeta_cl)``: ``u_cg`` the cell's log expression share in the control arm,
``D_c`` its depth there, ``e_lg`` the label's offset of the gene logits, ``lambda_l`` its shift of the log depth and
``zeta_cl = log sum_g exp(u_cg + e_lg)`` the new normaliser. With ``zeta_cl`` replaced by its population mean
``zeta_l`` (the spread of ``zeta_cl`` across cells is small next to the offsets: the shares of the few genes a
knockout moves differ little between cells), the population mean of the expected log-normalised expression is

``H_g(w, lambda) = mean_c F_g(u_cg + w, log D_c + lambda)`` at ``w = e_lg - zeta_l``,

where ``F_g(u, log D) = E[log1p(1e4 x / D)]`` for ``x ~ NB(D exp(u), theta_g)``
(:func:`pertpyro.causal._analytic.expected_log1p`). ``H_g`` depends on the label only through two numbers, so it is
computed once on a grid of ``(w, lambda)`` (per draw here; once per query for all draws in
:mod:`pertpyro.causal._table_draws`) and every label reads it by interpolation:

- ``F_g`` is tabulated once per query on a grid of ``(u, log D)`` (``theta`` is a point estimate, the same in every
  draw);
- ``H_g`` on the grid is a cross-correlation of that table with the population's histogram of ``(u_cg, log D_c)``
  (linear binning), one grouped convolution over the genes: its cost does not grow with the population's cells
  beyond the histogram;
- each label's value is a bilinear interpolation in ``(w, lambda)`` (:class:`CurveReader`, ``grid_sample``); the
  control arm sits on a node of the grid.

The labels' offsets come from the drawn effects (``effect * effect_mask``, ``library_effect``, the response rates)
read the way the program reads them; :func:`check_offsets` compares them with the program's own trace on a few
labels before they are used. Efficacy is summed out exactly: escapers are the control arm.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch.nn import functional

from pertpyro.causal._analytic import TARGET_SITES, expected_log1p
from pertpyro.causal._expected import arm_distribution
from pertpyro.data._statistics import TARGET_SUM
from pertpyro.module._guide_rates import intervention_rates
from pertpyro.module._program import PerturbationProgram
from pertpyro.module._targets import TargetSubsample
from pertpyro.module.sites import (
    ARTIFACT_LOCAL_SITES,
    EFFECT,
    EFFECT_MASK,
    EFFICACY,
    EFFICACY_RATE,
    LOCAL_SITES,
    PERTURBATION,
)

SHARE_STEP = 0.125
"""Grid step of the log expression share ``u`` (the population's histogram and the table)."""
DEPTH_STEP = 0.25
"""Grid step of the log depth (the population's histogram, the table and the labels' depth shifts)."""
SHARE_FLOOR = -25.0
"""Log shares below this are read at it (the expected log-normalised expression there is below ~1e-6)."""
SHIFT_LIMIT = 15.0
"""Logit shifts are read within ``+-SHIFT_LIMIT``."""
NORMALISER_CELLS = 64
"""Population cells whose normalisers ``zeta_cl`` are averaged into ``zeta_l``."""
CHECKED_LABELS = 4
"""Labels whose offsets :func:`check_offsets` compares with the program's trace."""
MARGIN = 0.5
"""Extra range of a new table on each side (in ``u`` and ``log D``), so that later draws reuse it."""
TABLE_CHUNK = 2**16
"""Table entries (genes x nodes) computed at once."""
GENE_BLOCK = 4096
"""Genes read by one ``grid_sample`` (its coordinates are float32: a taller image would blur its rows)."""


class UnsupportedProgram(ValueError):
    """The program's arms are not a logit offset and a depth shift per label (the ``grn`` block, per-cell ``theta``)."""


@dataclass
class NoiseTable:
    """``F_g(u, log D)`` on the grid ``u = SHARE_STEP * (u0 + i)``, ``log D = DEPTH_STEP * (d0 + k)``."""

    theta: torch.Tensor
    u0: int
    d0: int
    values: torch.Tensor  # (G, n_u, n_d)

    @classmethod
    def build(cls, theta: torch.Tensor, u_range: tuple[int, int], d_range: tuple[int, int]) -> NoiseTable:
        """Table over the grid indices ``u_range`` and ``d_range`` (inclusive) with ``MARGIN`` added."""
        pad_u, pad_d = math.ceil(MARGIN / SHARE_STEP), math.ceil(MARGIN / DEPTH_STEP)
        u0, d0 = u_range[0] - pad_u, d_range[0] - pad_d
        u = SHARE_STEP * torch.arange(u0, u_range[1] + pad_u + 1, dtype=torch.float64)
        log_depth = DEPTH_STEP * torch.arange(d0, d_range[1] + pad_d + 1, dtype=torch.float64)
        mean = (u[:, None] + log_depth[None, :]).exp().to(theta.dtype)  # (n_u, n_d)
        scale = (TARGET_SUM / log_depth.exp()).to(theta.dtype)  # (n_d,)
        per_chunk = max(1, TABLE_CHUNK // mean.numel())
        values = torch.cat(
            [
                expected_log1p(mean.expand(chunk.shape[0], -1, -1), chunk[:, None, None], scale)
                for chunk in theta.split(per_chunk)
            ]
        )  # (G, n_u, n_d)
        return cls(theta, u0, d0, values)

    def covers(self, theta: torch.Tensor, u_range: tuple[int, int], d_range: tuple[int, int]) -> bool:
        """Whether this table holds ``theta`` and the grid indices ``u_range`` x ``d_range``."""
        n_u, n_d = self.values.shape[1:]
        return (
            torch.equal(self.theta, theta)
            and self.u0 <= u_range[0]
            and u_range[1] < self.u0 + n_u
            and self.d0 <= d_range[0]
            and d_range[1] < self.d0 + n_d
        )


@dataclass
class LabelOffsets:
    """Per label: logit offsets ``e`` ``(L, G)``, log-depth shifts ``lam`` ``(L,)``, response probabilities ``p``."""

    logits: torch.Tensor
    depth: torch.Tensor
    response: torch.Tensor | None


@dataclass
class DesignRows:
    """The targets of each design as bags of rows: ``designs @ M`` is one ``embedding_bag`` of ``M``'s rows."""

    targets: torch.Tensor  # (nnz,) target of each entry, designs in order
    starts: torch.Tensor  # (L,) first entry of each design
    weights: torch.Tensor  # (nnz,) the design's value there

    @classmethod
    def of(cls, designs: torch.Tensor) -> DesignRows:
        """The bags of ``designs`` ``(L, T)``."""
        rows, targets = designs.nonzero(as_tuple=True)
        counts = torch.bincount(rows, minlength=designs.shape[0])
        starts = torch.cumsum(counts, 0) - counts
        return cls(targets, starts, designs[rows, targets])

    def sum_rows(self, matrix: torch.Tensor) -> torch.Tensor:
        """``designs @ matrix`` ``(L, G)`` for ``matrix`` ``(T, G)``: a gather for single targets, a sum for combinations."""
        return functional.embedding_bag(
            self.targets, matrix, self.starts, mode="sum", per_sample_weights=self.weights.to(matrix.dtype)
        )


def label_offsets(
    program: PerturbationProgram,
    latents: Mapping[str, torch.Tensor],
    designs: torch.Tensor,
    rows: DesignRows | None = None,
) -> LabelOffsets:
    """The responders' logit offsets, depth shifts and response probabilities of each design, for one draw.

    Read as the program reads its global sites (``effect * effect_mask``, ``library_effect``, the response rates);
    :func:`check_offsets` tests the reading against the program's trace. ``rows``: the designs' bags, when kept
    across draws.
    """
    if getattr(program, "grn", None) is not None or EFFECT not in latents:
        raise UnsupportedProgram("The table estimator needs free per-target effects (not the grn block).")
    effect = latents[EFFECT]
    if EFFECT_MASK in latents:
        effect = effect * latents[EFFECT_MASK]
    logits = (DesignRows.of(designs) if rows is None else rows).sum_rows(effect)  # (L, G)
    depth = designs @ program.library_effect.detach()
    response = None
    if program.use_efficacy and EFFICACY_RATE in latents:  # per target, or the targets' guide mixtures
        response = program.response_probability(designs, intervention_rates(program, dict(latents)))
    return LabelOffsets(logits, depth, response)


def check_offsets(
    program: PerturbationProgram,
    latents: Mapping[str, torch.Tensor],
    population: dict[str, torch.Tensor],
    designs: torch.Tensor,
    extra: Mapping[str, torch.Tensor],
    control_mean: torch.Tensor,
    offsets: LabelOffsets,
) -> None:
    """Raise :class:`UnsupportedProgram` unless the program's trace gives these offsets for a few labels.

    The first population cell (control-arm means ``control_mean[0]``), under the first :data:`CHECKED_LABELS`
    designs with ``efficacy = 1``, must have the means ``D exp(lam) softmax(u + e)`` and the response probabilities
    ``p`` of ``offsets``.
    """
    n = population["idx"].shape[0]
    size = min(CHECKED_LABELS, designs.shape[0])
    cell = _first_cell(population, n, size, every=True)
    cell["idx"] = torch.arange(size)
    action = {PERTURBATION: designs[:size], **_first_cell(extra, n, size), EFFICACY: torch.ones(size)}
    mean, _, response = arm_distribution(program, _first_cell(latents, n, size), cell, action)
    reference = control_mean[:1]
    log_share = torch.log_softmax(reference.log() + offsets.logits[:size], -1)
    expected = log_share + reference.sum(-1, keepdim=True).log() + offsets.depth[:size, None]
    if not torch.allclose(mean.log(), expected, atol=1e-3, rtol=0):
        raise UnsupportedProgram("The program's arms are not a logit offset and a depth shift per label.")
    if (response is None) != (offsets.response is None):
        raise UnsupportedProgram("The program's response probabilities differ from the drawn rates'.")
    if response is not None and offsets.response is not None:
        if not torch.allclose(response, offsets.response[:size], atol=1e-5, rtol=0):
            raise UnsupportedProgram("The program's response probabilities differ from the drawn rates'.")


def _first_cell(
    values: Mapping[str, torch.Tensor], n_cells: int, times: int, *, every: bool = False
) -> dict[str, torch.Tensor]:
    """Per-cell values of the first cell repeated ``times``; global values unchanged.

    Per-cell: the local sites (or every entry, with ``every``) whose first dimension is ``n_cells``.
    """
    local = set(LOCAL_SITES) | set(ARTIFACT_LOCAL_SITES)
    out = {}
    for name, value in values.items():
        per_cell = (every or name in local) and torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == n_cells
        out[name] = value[:1].repeat(times, *([1] * (value.dim() - 1))) if per_cell else value
    return out


def _control_arm(
    program: PerturbationProgram,
    latents: Mapping[str, torch.Tensor],
    population: dict[str, torch.Tensor],
    extra: Mapping[str, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Means and inverse dispersions of the population's control arm, reading only its own targets' rows."""
    n, n_targets = population["perturbation"].shape
    rows = population["perturbation"].any(0)
    rows[0] = True  # at least one row: the targets plate is never empty
    index = rows.nonzero().squeeze(-1)
    targets = TargetSubsample(index, torch.ones(index.shape[0]))
    subset = {name: value[index] if name in TARGET_SITES else value for name, value in latents.items()}
    action = {PERTURBATION: torch.zeros(n, index.shape[0]), **extra}
    mean, theta, _ = arm_distribution(program, dict(subset), population, action, targets)
    return mean, theta


def control_dispersion(control_mean: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """The one inverse dispersion per gene ``(G,)`` of the control arm, or :class:`UnsupportedProgram`."""
    theta = theta.expand(control_mean.shape)
    if not bool((theta == theta[:1]).all()):
        raise UnsupportedProgram("The table estimator needs one dispersion per gene, the same in every cell.")
    return theta[0].detach()


@dataclass
class Population:
    """The population's control arm on the grid of ``(u, log D)``: per gene, the histogram of its cells.

    ``kernel[g, 0, i, k]`` is the share of cells whose ``(u_cg, log D_c)`` falls near the node
    ``(SHARE_STEP * (u_low[g] + i), DEPTH_STEP * (d_low + k))`` (linear binning); ``shares`` are the expression
    shares of the first :data:`NORMALISER_CELLS` cells (the labels' normalisers).
    """

    theta: torch.Tensor  # (G,)
    kernel: torch.Tensor  # (G, 1, n_u, n_d)
    u_low: torch.Tensor  # (G,) long
    d_low: int
    shares: torch.Tensor  # (cells, G)

    @classmethod
    def from_control(cls, control_mean: torch.Tensor, theta: torch.Tensor) -> Population:
        """The histogram of the control arm's means ``(C, G)`` (inverse dispersions ``theta`` ``(G,)``)."""
        n, G = control_mean.shape
        log_depth = control_mean.sum(-1).log()  # (C,)
        u = (control_mean.log() - log_depth[:, None]).clamp_min(SHARE_FLOOR)  # (C, G)
        u_index = u / SHARE_STEP
        u_low = u_index.amin(0).floor().long()  # (G,)
        n_u = int((u_index.amax(0).floor().long() - u_low).max()) + 2
        d_index = log_depth / DEPTH_STEP
        d_low = int(d_index.min().floor())
        n_d = int(d_index.max().floor()) - d_low + 2
        position = u_index - u_low
        i0 = position.floor().long().clamp(0, n_u - 2)
        fu = (position - i0).clamp(0.0, 1.0)
        k0 = (d_index - d_low).floor().long().clamp(0, n_d - 2)  # (C,)
        fd = (d_index - d_low - k0).clamp(0.0, 1.0)[:, None]
        flat = (torch.arange(G) * (n_u * n_d))[None, :] + i0 * n_d + k0[:, None]  # (C, G)
        kernel = torch.zeros(G * n_u * n_d, dtype=u.dtype)
        for offset, weight in (
            (0, (1 - fu) * (1 - fd)),
            (1, (1 - fu) * fd),
            (n_d, fu * (1 - fd)),
            (n_d + 1, fu * fd),
        ):
            kernel.index_add_(0, (flat + offset).reshape(-1), weight.reshape(-1) / n)
        shares = u[:NORMALISER_CELLS].exp()
        return cls(theta, kernel.reshape(G, 1, n_u, n_d), u_low, d_low, shares)

    def normalisers(self, logits: torch.Tensor) -> torch.Tensor:
        """``zeta_l = mean_c log sum_g exp(u_cg + e_lg)`` over the first cells, for offsets ``(L, G)``."""
        sums = torch.exp(logits) @ self.shares.T  # (L, cells)
        if not bool(torch.isfinite(sums).all()):  # offsets too large for exp: shift each label by its largest
            top = logits.amax(-1, keepdim=True).clamp_min(0.0)
            return top.squeeze(-1) + torch.log(torch.exp(logits - top) @ self.shares.T).mean(-1)
        return sums.log_().mean(-1)  # (L,)


@dataclass
class Curves:
    """``H_g(w, lam)`` of a population on the grid ``w = SHARE_STEP * (w_low[g] + j)``, ``lam = DEPTH_STEP * (m_low + m)``.

    The control arm ``(w, lam) = (0, 0)`` lies on a node of every gene.
    """

    values: torch.Tensor  # (G, n_w, n_m)
    w_low: torch.Tensor  # (G,) long
    m_low: int
    control: torch.Tensor  # (G,)

    def covers(self, w_low: torch.Tensor, w_high: torch.Tensor, m_low: int, m_high: int) -> bool:
        """Whether the grid holds the node indices ``w_low..w_high`` (per gene) and ``m_low..m_high``."""
        n_w, n_m = self.values.shape[1:]
        return (
            bool((w_low >= self.w_low).all())
            and bool((w_high <= self.w_low + n_w - 1).all())
            and m_low >= self.m_low
            and m_high <= self.m_low + n_m - 1
        )

    @classmethod
    def build(
        cls,
        population: Population,
        w_low: torch.Tensor,
        w_high: torch.Tensor,
        m_low: int,
        m_high: int,
        cache: dict[str, object],
    ) -> Curves:
        """Curves over the node indices ``w_low..w_high`` ``(G,)`` and ``m_low..m_high`` (each holding 0).

        ``H_g`` on the grid is the cross-correlation of the noise table (kept in ``cache`` while it covers the
        grid) with the population's histogram: one grouped convolution over the genes.
        """
        kernel = population.kernel
        G, _, n_u, n_d = kernel.shape
        n_w = int((w_high - w_low).max()) + 1
        n_m = max(m_high - m_low + 1, 2)
        n_in = n_u + n_w - 1
        start = population.u_low + w_low  # (G,) first u node each gene reads
        u_range = (int(start.min()), int(start.max()) + n_in - 1)
        d_range = (population.d_low + m_low, population.d_low + m_low + n_d + n_m - 2)
        table = cache.get("table")
        if not isinstance(table, NoiseTable) or not table.covers(population.theta, u_range, d_range):
            table = NoiseTable.build(population.theta, u_range, d_range)
            cache["table"] = table
        rows = (start - table.u0)[:, None] + torch.arange(n_in)[None, :]  # (G, n_in)
        depth_start = population.d_low + m_low - table.d0
        window = table.values[torch.arange(G)[:, None], rows][..., depth_start : depth_start + n_d + n_m - 1]
        values = functional.conv2d(window.unsqueeze(0).to(kernel.dtype), kernel, groups=G)[0]  # (G, n_w, n_m)
        control = values[torch.arange(G), -w_low, -m_low]  # (G,)
        return cls(values, w_low, m_low, control)

    def reader(self, lam: torch.Tensor, draws: int = 1) -> CurveReader:
        """A :class:`CurveReader` of these curves at the labels' depth shifts ``lam`` ``(L,)``, up to ``draws``."""
        return CurveReader(self, lam, draws)


class CurveReader:
    """Bilinear interpolation of :class:`Curves` at logit shifts ``w`` ``(draws, L, G)`` and fixed ``lam`` ``(L,)``.

    Shifts beyond the grid read its edge. Genes are read in blocks of :data:`GENE_BLOCK`, each block's curves
    stacked into one image (a gene's rows padded by copies of its first and last, so that rounding never blends
    two genes) and read by one ``grid_sample``; the sampling grids are allocated once and keep the depth
    coordinates, so each read writes only the logit coordinates.
    """

    def __init__(self, curves: Curves, lam: torch.Tensor, draws: int) -> None:
        values = curves.values
        G, n_w, n_m = values.shape
        self.curves, self.n_labels, self.draws = curves, lam.shape[0], draws
        m_position = (lam / DEPTH_STEP - curves.m_low).clamp(0.0, n_m - 1.0)  # (L,)
        self.x_scale = 2.0 / (SHARE_STEP * max(n_w - 1, 1))
        self.blocks: list[tuple[int, int, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        for g0 in range(0, G, GENE_BLOCK):
            g1 = min(g0 + GENE_BLOCK, G)
            block = values[g0:g1]
            padded = torch.cat([block[..., :1], block, block[..., -1:]], dim=-1)  # (B, n_w, n_m + 2)
            height = (g1 - g0) * (n_m + 2)
            image = padded.permute(0, 2, 1).reshape(1, 1, height, n_w)
            x_shift = -(curves.w_low[g0:g1] * (2.0 / max(n_w - 1, 1)) + 1.0).to(values.dtype)  # (B,)
            row = torch.arange(g1 - g0, dtype=values.dtype) * (n_m + 2) + 1.0  # (B,)
            grid = torch.empty(draws, self.n_labels, g1 - g0, 2, dtype=values.dtype)
            grid[..., 1] = (row[None, :] + m_position[:, None]) * (2.0 / (height - 1)) - 1.0  # (L, B)
            self.blocks.append((g0, g1, image, x_shift, grid))

    def read(self, w: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Values at ``w`` ``(draws, L, G)`` (at most the reader's draws), written to ``out`` when given."""
        size = w.shape[0]
        if out is None:
            out = torch.empty(w.shape, dtype=self.curves.values.dtype)
        for g0, g1, image, x_shift, grid in self.blocks:
            torch.add(x_shift, w[..., g0:g1], alpha=self.x_scale, out=grid[:size, ..., 0])
            sampled = functional.grid_sample(
                image,
                grid[:size].reshape(1, size * self.n_labels, g1 - g0, 2),
                mode="bilinear",
                padding_mode="border",
                align_corners=True,
            )  # (1, 1, size * L, B)
            out[..., g0:g1] = sampled.reshape(size, self.n_labels, g1 - g0)
        return out


def shift_range(
    w: torch.Tensor, lam: torch.Tensor, margin: float = 0.0, *, per_gene: bool = True
) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Node indices (per gene in ``w``, common in ``lam``) that hold the shifts ``w`` ``(..., G)``, ``lam`` and 0.

    ``margin``: extra range of ``w`` on each side; ``per_gene=False``: every gene gets the range of all genes
    (found in one pass, no reduction along the labels).
    """
    G = w.shape[-1]
    if per_gene:
        flat = w.reshape(-1, G)
        low, high = flat.amin(0), flat.amax(0)
    else:
        low, high = (value.expand(G) for value in torch.aminmax(w))
    low = low.clamp(-SHIFT_LIMIT, 0.0) - margin
    high = high.clamp(0.0, SHIFT_LIMIT) + margin
    w_low = (low / SHARE_STEP).floor().long() - 1
    w_high = (high / SHARE_STEP).ceil().long() + 1
    m_low = math.floor(min(float(lam.min()), 0.0) / DEPTH_STEP)
    m_high = math.ceil(max(float(lam.max()), 0.0) / DEPTH_STEP)
    return w_low, w_high, m_low, m_high


def table_label_means(
    program: PerturbationProgram,
    latents: dict[str, torch.Tensor],
    population: dict[str, torch.Tensor],
    designs: torch.Tensor,
    extra: Mapping[str, torch.Tensor],
    *,
    responders: bool = False,
    cache: dict[str, object] | None = None,
) -> torch.Tensor:
    """Population mean of the expected log-normalised expression under each design, for one posterior draw.

    Parameters
    ----------
    program
        The model (free per-target effects; escapers are the control arm).
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
    cache
        A dict kept across the draws of one query: holds the :class:`NoiseTable` and whether the offsets were checked.

    Returns
    -------
    Tensor ``(L, G)``.

    Raises
    ------
    UnsupportedProgram
        When the program's arms are not of this form (then use :func:`pertpyro.causal._analytic.analytic_label_means`).
    """
    cache = {} if cache is None else cache
    control_mean, theta = _control_arm(program, latents, population, extra)
    theta = control_dispersion(control_mean, theta)
    offsets = label_offsets(program, latents, designs)
    if not cache.get("checked"):
        check_offsets(program, latents, population, designs, extra, control_mean, offsets)
        cache["checked"] = True
    cells = Population.from_control(control_mean, theta)
    w = offsets.logits - cells.normalisers(offsets.logits)[:, None]  # (L, G)
    curves = Curves.build(cells, *shift_range(w, offsets.depth), cache)
    values = curves.reader(offsets.depth).read(w[None])[0]
    if offsets.response is not None and not responders:
        values = torch.lerp(curves.control, values, offsets.response[:, None])
    return values
