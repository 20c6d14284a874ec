"""Average treatment effects by abduction, action and prediction through ``pyro.poutine.do``.

For each posterior draw: the guide gives the basal states of a population of observed cells (abduction); the
model is conditioned on those states and on the draw of the global sites, and ``poutine.do`` sets the
``perturbation`` site (and ``efficacy``: 1 for responders, 0 for escapers) (action); the model then gives the
counts' distribution at the population's own sequencing depth (prediction). The shift is the difference of the
expected ``log1p(1e4 x / sum x)`` between the intervened and the control arm, so it lives on the scale a screen
is analysed on, which is not linear in the mean. The expectation over count noise and over which cells respond is
taken with little Monte-Carlo noise (:mod:`pertpyro.causal._expected`), so the spread of the draws is posterior
uncertainty.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import pandas as pd
import torch

from pertpyro._settings import local_params, seeded
from pertpyro.causal._analytic import analytic_label_means
from pertpyro.causal._artifacts import abduct_artifact
from pertpyro.causal._counterfactual import abduct
from pertpyro.causal._expected import N_COUNTS, escapers_are_controls, expected_cell_values
from pertpyro.causal._probability import Recalibration
from pertpyro.causal._table import UnsupportedProgram, table_label_means
from pertpyro.causal._table_draws import table_mean_draws
from pertpyro.data._registry import Registry, design_matrix
from pertpyro.module._program import PerturbationProgram
from pertpyro.module._types import GuideLike
from pertpyro.module.sites import ARTIFACT

Estimator = Literal["simulate", "analytic", "table"]
"""How the expectation over the count noise is taken: simulated counts, analytically per cell (:mod:`._analytic`),
or analytically through a per-gene table of the population (:mod:`._table`)."""
ESTIMATORS = ("simulate", "analytic", "table")


@torch.no_grad()
def simulate_label_means(
    program: PerturbationProgram,
    guide: GuideLike,
    population: dict[str, torch.Tensor],
    designs: torch.Tensor,
    *,
    n_samples: int,
    responders: bool = False,
    weights: torch.Tensor | None = None,
    global_action: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
    n_counts: int = N_COUNTS,
    estimator: Estimator = "simulate",
) -> torch.Tensor:
    """Posterior draws of the mean log-normalised expression of ``population`` under each design.

    Parameters
    ----------
    program, guide
        The trained model and guide.
    population
        A minibatch dict (``counts``, ``perturbation``, ``batch_index``, ``library``, ``idx``) of observed cells
        whose basal states and depths define the population.
    designs
        Multi-hot interventions ``(L, T)``; a zero row is the control arm.
    n_samples
        Posterior draws.
    responders
        Intervene on ``efficacy = 1`` as well (the effect among cells where the knockout took).
    weights
        Optional ``(L, cells)`` weights of the population cells in each arm's mean (e.g. to match an arm's batch
        composition); uniform when ``None``. ``(W, L, cells)``: ``W`` weightings of the same simulated cells at no
        extra cost (e.g. batch-matched and uniform), output ``(n_samples, W, L, G)``.
    global_action
        Optional map from each draw's abducted latents to extra interventions on global sites, applied in every
        arm (e.g. ``adjacency`` with some edges removed: :func:`pertpyro.module._grn.adjacency_action`).
    n_counts
        Count replicates per cell and draw, coupled across arms (:mod:`pertpyro.causal._expected`).
    estimator
        ``"simulate"``: average over simulated counts (:mod:`pertpyro.causal._expected`); ``"analytic"``: the
        expectation over the count noise computed per cell and gene, all labels vectorised
        (:mod:`pertpyro.causal._analytic`; ``n_counts`` unused); ``"table"``: the same expectation read from one
        table per gene of the population (:mod:`pertpyro.causal._table`), for thousands of labels: every draw reads
        one set of population curves (:mod:`pertpyro.causal._table_draws`; per draw with ``global_action`` or an
        artifact block); it falls back to ``"analytic"`` with ``weights`` or for programs whose arms are not a
        logit offset per label (the ``grn`` block, ``latent_effects``).

    Returns
    -------
    Tensor ``(n_samples, L, G)`` (``(n_samples, W, L, G)`` with 3-D ``weights``).
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}.")
    if estimator == "table" and getattr(program, "latent_effects", False):  # a latent shift is no logit offset
        estimator = "analytic"
    n_labels, n_genes = designs.shape[0], population["counts"].shape[1]
    sets = () if weights is None else tuple(weights.shape[:-2])
    out = torch.empty(n_samples, *sets, n_labels, n_genes)
    escaper_arms = None  # found on the first draw (a property of the program), then reused
    table_cache: dict[str, object] = {}  # the table estimator's noise table, kept across the draws
    with local_params():
        if estimator == "table" and weights is None and global_action is None:
            try:  # every draw from one set of population curves
                return table_mean_draws(program, guide, population, designs, out, responders=responders)
            except UnsupportedProgram:
                pass  # the per-draw table (artifact models) or the per-cell analytic estimator below
        for s in range(n_samples):
            latents = abduct(guide, population)
            extra = {} if global_action is None else global_action(latents)
            cells = population
            if getattr(program, "artifact_block", None) is not None:  # effects among clean cells
                clean = {ARTIFACT: torch.zeros(population["counts"].shape[0])}
                latents, cells = abduct_artifact(program, guide, population, latents, clean)  # clean cells' depths
                extra = {**extra, **clean}
            if escaper_arms is None and not responders:
                escaper_arms = not escapers_are_controls(program, latents, cells, designs, extra)
            if estimator == "table" and weights is None and not escaper_arms:
                try:
                    out[s] = table_label_means(
                        program, latents, cells, designs, extra, responders=responders, cache=table_cache
                    )
                    continue
                except UnsupportedProgram:
                    estimator = "analytic"
            if estimator in ("analytic", "table"):
                out[s] = analytic_label_means(
                    program,
                    latents,
                    cells,
                    designs,
                    extra,
                    responders=responders,
                    escaper_arms=bool(escaper_arms),
                    weights=weights,
                )
                continue
            values = expected_cell_values(
                program,
                latents,
                cells,
                designs,
                extra,
                responders=responders,
                n_counts=n_counts,
                escaper_arms=escaper_arms,
            )  # (L, cells, G)
            if weights is None:
                out[s] = values.mean(1)
            else:
                out[s] = torch.einsum("...lc,lcg->...lg", weights, values) / weights.sum(-1, keepdim=True)
    return out


QUANTILE_CHUNK = 2**12
"""Columns of draws sorted at once by :func:`draw_quantiles`."""


def draw_quantiles(draws: np.ndarray, probs: Sequence[float]) -> list[np.ndarray]:
    """``np.quantile(draws, probs, axis=0)`` (linear interpolation), one array per probability.

    The draws of each column are sorted contiguously, a chunk of columns at a time: numpy's quantile along the
    first axis of millions of columns selects in strided memory and is an order of magnitude slower.
    """
    n, shape = draws.shape[0], draws.shape[1:]
    flat = draws.reshape(n, -1)
    out = [np.empty(flat.shape[1], dtype=np.result_type(draws.dtype, np.float64)) for _ in probs]
    positions = [(n - 1) * float(p) for p in probs]
    for start in range(0, flat.shape[1], QUANTILE_CHUNK):
        block = np.ascontiguousarray(flat[:, start : start + QUANTILE_CHUNK].T)  # (columns, draws)
        block.sort(axis=-1)
        for values, position in zip(out, positions, strict=True):
            low = min(int(np.floor(position)), n - 1)
            high, t = min(low + 1, n - 1), position - low
            a, b = block[:, low].astype(out[0].dtype), block[:, high].astype(out[0].dtype)
            diff = b - a  # numpy's lerp: from the nearer end, so that t = 0 and t = 1 are exact
            values[start : start + block.shape[0]] = b - diff * (1 - t) if t >= 0.5 else a + diff * t
    return [values.reshape(shape) for values in out]


def ate_table(
    draws: torch.Tensor,
    labels: Sequence[str],
    genes: Sequence[str],
    *,
    ci: float,
    calibration: Recalibration | None = None,
) -> pd.DataFrame:
    """Tidy ``(perturbation, gene, mean, lower, upper)`` from draws ``(S, L, G)`` of shifts.

    The interval is the equal-tailed posterior one, or, with ``calibration`` (an
    :class:`~pertpyro.posterior.IntervalCalibration`), its recalibrated Normal interval.
    """
    arr = draws.numpy()
    mean = arr.mean(0)
    if calibration is None:
        lower, upper = draw_quantiles(arr, ((1 - ci) / 2, 1 - (1 - ci) / 2))
    else:
        lower, upper = calibration.bounds(arr, ci)
    n_labels, n_genes = mean.shape
    return pd.DataFrame(
        {
            "perturbation": np.repeat(np.asarray(labels, dtype=object), n_genes),
            "gene": np.tile(np.asarray(genes, dtype=object), n_labels),
            "mean": mean.ravel(),
            "lower": lower.ravel(),
            "upper": upper.ravel(),
        }
    )


def average_treatment_effect(
    program: PerturbationProgram,
    guide: GuideLike,
    population: dict[str, torch.Tensor],
    labels: Sequence[str],
    registry: Registry,
    *,
    n_samples: int = 100,
    ci: float = 0.9,
    responders: bool = False,
    weights: np.ndarray | None = None,
    seed: int = 0,
    global_action: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
    calibration: Recalibration | None = None,
    estimator: Estimator = "simulate",
) -> pd.DataFrame:
    """Shift of mean ``log1p(1e4 x / sum x)`` under each perturbation label against control.

    Parameters
    ----------
    program, guide
        The trained model and guide.
    population
        Minibatch dict of the cells whose basal states define the population (e.g. control cells).
    labels
        Perturbation labels: single targets or combinations joined by the registry's delimiter.
    registry
        Registry mapping labels to design rows.
    n_samples
        Posterior draws.
    ci
        Mass of the equal-tailed credible interval.
    responders
        Effect among responders (``efficacy = 1``) instead of intent-to-treat.
    weights
        Optional ``(labels, cells)`` weights of the population cells in each label's arm (the control arm is
        unweighted).
    seed
        Seed of this query; the global RNG state is left untouched.
    global_action
        Extra interventions on global sites given each draw's latents (see :func:`simulate_label_means`).
    calibration
        Recalibrate the intervals (:class:`~pertpyro.posterior.IntervalCalibration`); ``None``: raw quantiles.
    estimator
        Expectation over the count noise by simulation or analytically (see :func:`simulate_label_means`).

    Returns
    -------
    Tidy DataFrame with columns ``perturbation``, ``gene``, ``mean``, ``lower``, ``upper``.
    """
    if not 0 < ci < 1:
        raise ValueError(f"ci must lie strictly between 0 and 1, got {ci}.")
    labels = [str(label) for label in labels]
    shifts = label_shift_draws(
        program,
        guide,
        population,
        labels,
        registry,
        n_samples=n_samples,
        responders=responders,
        weights=weights,
        seed=seed,
        global_action=global_action,
        estimator=estimator,
    )
    return ate_table(shifts, labels, registry.genes, ci=ci, calibration=calibration)


def label_shift_draws(
    program: PerturbationProgram,
    guide: GuideLike,
    population: dict[str, torch.Tensor],
    labels: Sequence[str],
    registry: Registry,
    *,
    n_samples: int,
    responders: bool = False,
    weights: np.ndarray | torch.Tensor | None = None,
    seed: int = 0,
    global_action: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
    n_counts: int = N_COUNTS,
    estimator: Estimator = "simulate",
) -> torch.Tensor:
    """Posterior draws of the shift of each label against control, ``(n_samples, labels, genes)``.

    The arms are ``[control] + labels`` simulated on ``population`` with common random numbers (see
    :func:`simulate_label_means`), under ``seed`` with the global RNG state left untouched; ``weights`` are
    ``(labels, cells)`` weights of the population in each label's arm (the control arm is unweighted), or
    ``(W, labels, cells)`` for ``W`` weightings of the same draws (output ``(n_samples, W, labels, genes)``);
    ``n_counts``: count replicates per cell and draw; ``estimator``: simulated or analytic expectation over the
    count noise (:func:`simulate_label_means`).
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be positive, got {n_samples}.")
    labels = [str(label) for label in labels]
    if not labels:
        raise ValueError("Give at least one perturbation label.")
    designs = torch.from_numpy(
        np.concatenate([np.zeros((1, registry.n_targets), np.float32), design_matrix(labels, registry)])
    )
    with seeded(seed):
        arm_weights = None
        if weights is not None:
            weights = torch.as_tensor(weights, dtype=torch.float32)
            arm_weights = torch.cat([torch.ones(*weights.shape[:-2], 1, weights.shape[-1]), weights], dim=-2)
        means = simulate_label_means(
            program,
            guide,
            population,
            designs,
            n_samples=n_samples,
            responders=responders,
            weights=arm_weights,
            global_action=global_action,
            n_counts=n_counts,
            estimator=estimator,
        )
    return means[..., 1:, :].sub_(means[..., :1, :])  # in place: all-label tables of draws are large
