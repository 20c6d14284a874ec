"""All posterior draws of an all-label table from one set of population curves.

:func:`pertpyro.causal._table.table_label_means` answers one posterior draw. Across the draws of one query only the
global sites change the labels' offsets; the population's part of the table (its control arm, histogram and the
curves ``H_g(w, lambda)``) depends on the draw only through the cells' basal states, whose draw-to-draw spread
averages out over the population's cells (:func:`pertpyro.causal.label_shift_draws` with ``estimator="table"``
agrees with the per-draw simulation, ``benchmarks/ate_estimators.py``). So the curves are built from the first draw
(the population's basal states abducted once) and every draw reads them:

- the first draw abducts the whole population; later draws draw only the global sites the offsets read, from the
  guide's own distributions of them (:func:`global_sampler`; or the guide run on one cell where those distributions
  depend on other draws);
- each draw's offsets and normalisers are a gather and one product with a few cells' shares;
- draws are read in chunks of :data:`DRAW_CHUNK` draws x labels x genes by one interpolation; the curves span the
  range of all genes' shifts (one pass finds it) and are widened (rebuilt) only when a chunk's shifts leave them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyro
import torch
from pyro import poutine

from pertpyro.causal._counterfactual import abduct
from pertpyro.causal._expected import escapers_are_controls
from pertpyro.causal._table import (
    CurveReader,
    Curves,
    DesignRows,
    Population,
    UnsupportedProgram,
    _control_arm,
    check_offsets,
    control_dispersion,
    label_offsets,
    shift_range,
)
from pertpyro.data._loader import standalone_args
from pertpyro.module._program import PerturbationProgram
from pertpyro.module._types import GuideLike
from pertpyro.module.sites import (
    ARTIFACT_LOCAL_SITES,
    EFFECT,
    EFFECT_MASK,
    EFFICACY_GUIDE_RATE,
    EFFICACY_RATE,
    LOCAL_SITES,
)

DRAW_CHUNK = 2**22
"""Draws x labels x genes interpolated at once (memory: a few float32 tensors of this size)."""
SHIFT_MARGIN = 1.0
"""Extra range of the curves' logit shifts on each side, so that later draws reuse them."""
CHECK_CELLS = 8
"""Population cells on which the escaper arms are compared with the control arm (a property of the program)."""
TABLE_SITES = (EFFICACY_RATE, EFFICACY_GUIDE_RATE, EFFECT, EFFECT_MASK)
"""The global sites whose draws the labels' offsets read."""


def table_mean_draws(
    program: PerturbationProgram,
    guide: GuideLike,
    population: dict[str, torch.Tensor],
    designs: torch.Tensor,
    out: torch.Tensor,
    *,
    responders: bool = False,
) -> torch.Tensor:
    """Write ``out[s]``: the population mean of the expected log-normalised expression under each design.

    Parameters
    ----------
    program, guide
        The trained model and guide (free per-target effects, one dispersion per gene, no artifact block).
    population
        The cells' factual data.
    designs
        Multi-hot interventions ``(L, T)``.
    out
        ``(S, L, G)``: one row per posterior draw.
    responders
        Set ``efficacy = 1`` (the effect among responders) instead of summing over the response.

    Returns
    -------
    ``out``.

    Raises
    ------
    UnsupportedProgram
        When the program's arms are not a logit offset and a depth shift per label, or its escapers differ from
        the control arm (then use :func:`pertpyro.causal._analytic.analytic_label_means`).
    """
    if getattr(program, "artifact_block", None) is not None:
        raise UnsupportedProgram("Artifact models abduct each cell's state per draw: use the per-draw table.")
    n_samples, n_labels, n_genes = out.shape
    n = population["idx"].shape[0]
    latents = abduct(guide, population)
    if not responders:
        few, few_latents = _first_cells(population, n, CHECK_CELLS), _first_cells(latents, n, CHECK_CELLS)
        if not escapers_are_controls(program, few_latents, few, designs, {}):
            raise UnsupportedProgram("The program's escapers differ from its control arm.")
    control_mean, theta = _control_arm(program, latents, population, {})
    cells = Population.from_control(control_mean, control_dispersion(control_mean, theta))
    offsets = label_offsets(program, latents, designs)
    check_offsets(program, latents, population, designs, {}, control_mean, offsets)
    lam = offsets.depth  # the library effects are parameters: the same in every draw
    one_cell = _first_cells(population, n, 1)
    sampler = global_sampler(guide, one_cell)
    rows = DesignRows.of(designs)
    mix = offsets.response is not None and not responders
    cache: dict[str, object] = {}
    reader: CurveReader | None = None
    chunk = max(1, min(n_samples, DRAW_CHUNK // max(n_labels * n_genes, 1)))
    w = torch.empty(chunk, n_labels, n_genes)
    response = torch.ones(chunk, n_labels)
    for start in range(0, n_samples, chunk):
        size = min(chunk, n_samples - start)
        for i in range(size):
            if start + i > 0:  # the guide's parameters were checked on the first draw
                with pyro.validation_enabled(False):
                    drawn = abduct(guide, one_cell) if sampler is None else sampler()
                    offsets = label_offsets(program, drawn, designs, rows)
            torch.sub(offsets.logits, cells.normalisers(offsets.logits)[:, None], out=w[i])
            if mix and offsets.response is not None:
                response[i] = offsets.response
        w_low, w_high, m_low, m_high = shift_range(w[:size], lam, per_gene=False)
        if reader is None or not reader.curves.covers(w_low, w_high, m_low, m_high):
            curves = Curves.build(cells, *shift_range(w[:size], lam, SHIFT_MARGIN, per_gene=False), cache)
            reader = curves.reader(lam, chunk)
        if mix:
            values = reader.read(w[:size])  # (size, L, G)
            torch.lerp(reader.curves.control, values, response[:size, :, None], out=out[start : start + size])
        else:
            reader.read(w[:size], out[start : start + size])
    return out


def global_sampler(guide: GuideLike, batch: dict[str, torch.Tensor]) -> Callable[[], dict[str, torch.Tensor]] | None:
    """A function drawing the global sites that the table reads from the guide's own distributions of them.

    The guide is traced twice on ``batch``: when every such site has the same distribution in both traces (its
    parameters do not depend on other draws, as in a mean-field guide), later draws need not run the guide (nor
    its encoder, nor the transforms of its parameters); otherwise ``None``.
    """
    args = standalone_args(batch)
    first, second = (poutine.trace(guide).get_trace(*args) for _ in range(2))
    sites: dict[str, Any] = {}
    for name in TABLE_SITES:
        if name not in first.nodes:
            continue
        fn = first.nodes[name]["fn"]
        one, other = _parameters(fn), _parameters(second.nodes[name]["fn"])
        if not one or len(one) != len(other) or not all(torch.equal(a, b) for a, b in zip(one, other, strict=True)):
            return None
        sites[name] = fn
    return lambda: {name: fn() for name, fn in sites.items()}


def _parameters(fn: Any) -> list[torch.Tensor]:
    """The tensors that parameterise a distribution (through its base distributions)."""
    out = [value for key in getattr(fn, "arg_constraints", {}) if torch.is_tensor(value := getattr(fn, key, None))]
    base = getattr(fn, "base_dist", None)
    return out + (_parameters(base) if base is not None else [])


def _first_cells(values: dict[str, torch.Tensor], n_cells: int, size: int) -> dict[str, torch.Tensor]:
    """The first ``size`` cells of a minibatch dict (``idx`` renumbered) or of abducted latents (local sites only)."""
    batch = "idx" in values
    local = set(LOCAL_SITES) | set(ARTIFACT_LOCAL_SITES)
    out = {}
    for name, value in values.items():
        per_cell = (batch or name in local) and torch.is_tensor(value) and value.dim() > 0
        out[name] = value[:size] if per_cell and value.shape[0] == n_cells else value
    if batch:
        out["idx"] = torch.arange(out["counts"].shape[0])
    return out
