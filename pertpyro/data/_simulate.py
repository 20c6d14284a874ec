"""A seeded ground-truth simulator of a single-cell CRISPR screen.

The simulator draws a screen from a generative process close to the one pertpyro fits and returns
the truth next to the counts, so that recovery of effects, efficacies and average treatment effects can be scored.
It is written as small private steps (:func:`_draw_basal`, :func:`_draw_effects`, :func:`_make_perturbations`,
:func:`_assign_perturbations`, :func:`_sample_counts`, :func:`_true_shifts`) so that later options (a regulatory
network that propagates knockouts, doublets and low-quality cells) extend one step each, through extra keyword
arguments of :func:`simulate`.

Random streams are keyed (:func:`_rng`): each step and each chunk of cells draws from its own
``SeedSequence(seed, spawn_key=...)``, so results are identical whatever the number of threads, and a new step added
later does not change the draws of the existing ones.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from pertpyro._keys import TRUTH_KEY
from pertpyro.data._simulate_artifacts import add_artifacts, check_artifact_args
from pertpyro.data._simulate_grn import check_grn_args, simulate_grn
from pertpyro.data._statistics import log_normalise

logger = logging.getLogger(__name__)

_CHUNK_ENTRIES = 2**18
"""Cells are generated in chunks of about this many (cell, gene) entries: bounds memory, sets the random streams."""

# Keys of the independent random streams (first element of the spawn key); never renumber, only append.
_STREAM_BASAL, _STREAM_EFFECTS, _STREAM_ASSIGN, _STREAM_COUNTS, _STREAM_TRUTH, _STREAM_ARTIFACTS, _STREAM_GUIDES = (
    range(7)
)


@dataclass(frozen=True)
class _Basal:
    """Global parameters of unperturbed cells (everything but the perturbation effects)."""

    loadings: np.ndarray  # (K, G) W: basal state -> gene logits
    baseline: np.ndarray  # (G,) b: baseline log-proportions
    batch_offset: np.ndarray  # (B, G) additive batch effect on the logits
    theta: np.ndarray  # (G,) NB inverse dispersion
    library_size: tuple[float, float]  # (mean, sd) of log library size

    @property
    def n_genes(self) -> int:
        return self.baseline.shape[0]

    @property
    def n_batches(self) -> int:
        return self.batch_offset.shape[0]


def simulate(
    *,
    n_cells: int = 4000,
    n_genes: int = 200,
    n_targets: int = 20,
    n_strong: int | None = None,
    n_combinations: int = 3,
    latent_dim: int = 5,
    n_batches: int = 1,
    effect_density: float = 0.1,
    effect_scale: tuple[float, float] = (1.0, 0.25),
    knockout: float = -2.0,
    efficacy: tuple[float, float] = (0.5, 0.9),
    library_size: tuple[float, float] = (7.0, 0.4),
    dispersion: tuple[float, float] = (1.6, 0.5),
    baseline_scale: float = 1.5,
    loading_scale: float = 0.3,
    batch_scale: float = 0.2,
    control_fraction: float = 0.2,
    combination_fraction: float = 0.1,
    control: str = "control",
    delimiter: str = "+",
    n_truth_cells: int = 10_000,
    n_jobs: int | None = None,
    seed: int = 0,
    grn: bool = False,
    n_regulators: int | None = None,
    grn_density: float = 0.1,
    grn_steps: int = 3,
    grn_weight: tuple[float, float] = (0.5, 1.5),
    doublet_rate: float = 0.0,
    low_quality_rate: float = 0.0,
    n_mito: int = 5,
    n_guides: int = 0,
    guide_spread: float = 1.0,
) -> AnnData:
    r"""Simulate a single-cell CRISPR screen with known ground truth.

    Generative process (cells :math:`n`, genes :math:`g`, targets :math:`t`, batches :math:`b`)::

        W_kg ~ N(0, loading_scale^2)           b_g ~ N(0, baseline_scale^2)      o_bg ~ N(0, batch_scale^2)
        log theta_g ~ N(dispersion)            rho_t ~ Uniform(efficacy)
        M_tg ~ Bernoulli(effect_density)       E_tg ~ N(0, s_t^2), s_t = effect_scale[0] (strong) or [1] (weak)
        M_tt = 1, E_tt = knockout              (target t is gene t: its own gene is knocked down)
        z_n ~ N(0, I_K)                        log l_n ~ N(library_size)         b_n ~ Uniform(batches)
        d_n in {0,1}^T  (control: none, single target, or one of n_combinations pairs)
        e_n ~ Bernoulli(prod_{t: d_nt = 1} rho_t)                (escapers, e_n = 0, show no effect)
        (n_guides > 0: guide g_n of the cell's label, logit rho_g ~ N(logit prod_t rho_t, guide_spread^2),
         e_n ~ Bernoulli(rho_{g_n}))
        mu_n = l_n * softmax(z_n W + b + o_{b_n} + e_n * d_n (M * E))
        x_ng ~ NegativeBinomial(mean mu_ng, inverse dispersion theta_g)

    Effects of a combination add on the logit (log-mean) scale. Genes are named ``G0000, G0001, ...`` and target
    ``t`` is gene ``t`` (the first ``n_targets`` genes), so a regulator is always a measured gene.

    Parameters
    ----------
    n_cells
        Number of cells.
    n_genes
        Number of genes.
    n_targets
        Number of individual targets (at most ``n_genes``).
    n_strong
        Number of targets with strong effects (the others are weak); ``None`` for half of them, rounded up.
    n_combinations
        Number of two-target combinations (distinct pairs of targets), labelled ``"A+B"`` with targets sorted.
    latent_dim
        Dimension of the basal state ``z``.
    n_batches
        Number of batches; cells are assigned uniformly at random.
    effect_density
        Probability that a target affects a gene (besides its own).
    effect_scale
        Standard deviations of the logit effects of strong and of weak targets.
    knockout
        Logit effect of a target on its own gene (``-2`` keeps about 13% of the expression); ``0`` for none.
    efficacy
        Range of the per-target probability that a cell responds to the guide.
    library_size
        Mean and standard deviation of the log library size (expected total counts of a cell).
    dispersion
        Mean and standard deviation of the log NB inverse dispersion ``theta`` per gene (``1.6``: ``theta ~ 5``).
    baseline_scale
        Standard deviation of the baseline log-proportions across genes.
    loading_scale
        Standard deviation of the entries of ``W`` (basal state to gene logits).
    batch_scale
        Standard deviation of the per-batch, per-gene logit offsets.
    control_fraction
        Fraction of control cells.
    combination_fraction
        Fraction of cells carrying a combination (ignored when ``n_combinations`` is 0); the remaining cells are
        spread evenly over the single targets.
    control
        Label of control cells.
    delimiter
        Separator of targets in combination labels.
    n_truth_cells
        Fresh cells per perturbation in the Monte Carlo estimate of the true shifts; ``0`` skips it (the shifts are
        then NaN).
    n_jobs
        Threads used to generate chunks of cells; ``None`` for all cores. Does not change the result.
    seed
        Non-negative integer seed; the same seed and arguments give identical data and truth.
    grn
        Replace the free per-target effects by knockouts that propagate through a known sparse regulatory network
        over the first ``n_regulators`` genes (:mod:`pertpyro.data._simulate_grn`); ``effect_density``,
        ``effect_scale`` and ``n_strong`` are then unused. Off by default (outputs are unchanged).
    n_regulators
        Number of regulators with ``grn=True`` (the targets plus ``n_regulators - n_targets`` never-perturbed
        regulators); ``None``: the targets only.
    grn_density
        Probability of each admissible (regulator, gene) edge.
    grn_steps
        Number of propagation steps of a knockout through the network.
    grn_weight
        Range of edge magnitudes (signs are random).
    doublet_rate, low_quality_rate
        Fractions of cells turned into doublets and low-quality cells, with their clean counts kept as truth
        (:mod:`pertpyro.data._simulate_artifacts`); 0 (default) leaves the screen exactly as without them.
    n_mito
        Genes renamed ``MT-...`` (the last ones) when ``low_quality_rate > 0``, so that :func:`pertpyro.pp.qc` sees
        the mitochondrial fraction that low-quality cells inflate.
    n_guides
        Guides per perturbation label (and non-targeting guides of the control cells), spread evenly over the
        label's cells in ``obs["guide"]`` (``"G0003_g1"``, ``"control_g2"``, ...), each with its own response rate
        around its label's (:func:`_draw_guides`); 0 (default): no guide column, every cell at its label's rate.
    guide_spread
        Standard deviation of the guides' logit response rates around their label's.

    Returns
    -------
    AnnData with raw counts in ``X`` (CSR, ``float32`` holding integers), gene names ``G0000, ...`` as
    ``var_names``, and:

    - ``obs["perturbation"]``: categorical label (``control``, a target, or ``"A+B"``);
    - ``obs["batch"]``: categorical batch (``"batch0", ...``), present even with one batch;
    - ``obs["efficacy"]``: bool truth ``e_n``, whether the cell's perturbation took effect. ``True`` for control
      cells (a product over no targets is 1), so ``~efficacy`` marks exactly the escapers;
    - ``obs["n_counts"]``: total counts of the cell;
    - ``obs["guide"]`` (with ``n_guides``): the cell's guide;
    - ``uns["truth"]``: the ground truth (schema in the notes below).

    Notes
    -----
    ``uns["truth"]`` holds only arrays, lists of strings, scalars and dicts, so it survives ``write_h5ad``:
    ``targets`` (T), ``genes`` (G), ``perturbations`` (P labels: singles in target order, then combinations;
    never the control), ``design`` (P, T) bool targets of each label, ``effect`` (T, G) logit effects ``M * E``,
    ``mask`` (T, G) bool, ``strong`` (T,) bool, ``effect_sd`` (T,), ``efficacy_prob`` (T,) ``rho``,
    ``perturbation_efficacy_prob`` (P,), ``perturbation_effect`` (P, G) logit shift of a responding cell,
    ``shift`` (P, G) and ``responder_shift`` (P, G), ``W`` (K, G), ``baseline`` (G,), ``batch_offset`` (B, G),
    ``theta`` (G,), ``batches``, ``control``, ``delimiter``, ``latent_dim``, ``seed``, ``n_truth_cells``, and
    ``params`` (the resolved arguments); with ``grn=True`` also ``grn``, the network (see
    :func:`pertpyro.data._simulate_grn.simulate_grn`); with ``n_guides`` also ``guides`` (targeting guides),
    ``guide_labels`` and ``guide_efficacy_prob`` (their response rates); ``perturbation_efficacy_prob`` is then
    the mixture of a label's guides' rates weighted by their cells.

    ``responder_shift[p, g]`` is the population difference of the mean of ``log1p(1e4 * x / sum(x))`` between
    cells that respond to perturbation ``p`` and control cells. It is estimated by Monte Carlo over
    ``n_truth_cells`` fresh cells, with common random numbers: both arms share basal states, library sizes, batches
    and NB gamma draws, and perturbed Poisson counts are coupled to control ones by thinning / superposition, which
    is exact in distribution and removes most of the noise. ``shift`` is the intent-to-treat shift over all cells
    that received the guide; escapers are distributed exactly like control cells and the shift is a mean over
    cells, so ``shift = perturbation_efficacy_prob * responder_shift`` holds exactly in the population.
    """
    grn_options = {"n_regulators": n_regulators, "density": grn_density, "n_steps": grn_steps, "weight": grn_weight}
    artifact_args = {"doublet_rate": doublet_rate, "low_quality_rate": low_quality_rate, "n_mito": n_mito}
    check_artifact_args(**artifact_args, low_quality_keep=(0.1, 0.3), n_genes=n_genes, n_targets=n_targets)
    options = {"n_regulators", "grn_options", "artifact_args", "options", *artifact_args}
    params = _check_args(**{k: v for k, v in locals().items() if not k.startswith("grn") and k not in options})
    if grn:
        grn_options["n_regulators"] = check_grn_args(n_genes=n_genes, n_targets=n_targets, **grn_options)
    n_jobs = params.pop("n_jobs")
    n_strong, effect_scale, efficacy = params["n_strong"], params["effect_scale"], params["efficacy"]
    library_size, dispersion = params["library_size"], params["dispersion"]
    t0 = time.perf_counter()

    genes = _names("G", n_genes)
    targets = genes[:n_targets]
    basal = _draw_basal(
        _rng(seed, _STREAM_BASAL),
        n_genes=n_genes,
        latent_dim=latent_dim,
        n_batches=n_batches,
        baseline_scale=baseline_scale,
        loading_scale=loading_scale,
        batch_scale=batch_scale,
        dispersion=dispersion,
        library_size=library_size,
    )
    effects = _draw_effects(
        _rng(seed, _STREAM_EFFECTS),
        n_targets=n_targets,
        n_genes=n_genes,
        n_strong=n_strong,
        density=effect_density,
        effect_scale=effect_scale,
        knockout=knockout,
        efficacy=efficacy,
    )
    grn_truth = None
    if grn:  # the targets' effects come from knockouts propagated through a known network
        effects["effect"], effects["mask"], grn_truth = simulate_grn(
            seed, n_targets=n_targets, n_genes=n_genes, knockout=knockout, **grn_options
        )
    labels, design = _make_perturbations(
        _rng(seed, _STREAM_EFFECTS, 1), targets=targets, n_combinations=n_combinations, delimiter=delimiter
    )
    label_effect = _perturbation_effects(design, effects["effect"])  # (P, G)
    label_prob = np.prod(np.where(design, effects["efficacy_prob"][None, :], 1.0), axis=1)  # (P,)

    code, responds, batch = _assign_perturbations(
        _rng(seed, _STREAM_ASSIGN),
        n_cells=n_cells,
        n_targets=n_targets,
        n_combinations=n_combinations,
        control_fraction=control_fraction,
        combination_fraction=combination_fraction,
        label_prob=label_prob,
        n_batches=n_batches,
    )
    guides = None
    if n_guides > 0:  # each cell responds at its own guide's rate; a label's rate is its guides' mixture
        guides = _draw_guides(_rng(seed, _STREAM_GUIDES), code, label_prob, n_guides=n_guides, spread=guide_spread)
        responds, label_prob = guides["responds"], guides["label_prob"]
    # Logit shift of each cell: row P of the extended table is "no shift" (controls and escapers).
    shift_code = np.where(responds & (code < len(labels)), code, len(labels))
    x = _sample_counts(basal, np.vstack([label_effect, np.zeros(n_genes)]), shift_code, batch, seed=seed, n_jobs=n_jobs)
    t1 = time.perf_counter()

    if n_truth_cells > 0:
        responder_shift = _true_shifts(basal, label_effect, n_cells=n_truth_cells, seed=seed, n_jobs=n_jobs)
    else:
        responder_shift = np.full((len(labels), n_genes), np.nan)
    itt_shift = label_prob[:, None] * responder_shift
    logger.debug("simulate: counts in %.2fs, true shifts in %.2fs", t1 - t0, time.perf_counter() - t1)

    categories = [control, *labels]
    obs = pd.DataFrame(
        {
            "perturbation": pd.Categorical.from_codes(np.where(code == len(labels), 0, code + 1), categories),
            "batch": pd.Categorical.from_codes(batch, _names("batch", n_batches, width=1)),
            "efficacy": responds,
            "n_counts": np.asarray(x.sum(axis=1), dtype=np.int64).ravel(),
        },
        index=pd.Index(_names("cell", n_cells), dtype=object),
    )
    if guides is not None:
        names = [f"{label}_g{j + 1}" for label in labels for j in range(n_guides)]
        names += [f"{control}_g{j + 1}" for j in range(n_guides)]
        obs["guide"] = pd.Categorical.from_codes(guides["guide"], names)
    adata = AnnData(X=x, obs=obs, var=pd.DataFrame(index=pd.Index(genes, dtype=object)))
    adata.uns[TRUTH_KEY] = {
        "targets": list(targets),
        "genes": list(genes),
        "perturbations": list(labels),
        "design": design,
        "effect": effects["effect"],
        "mask": effects["mask"],
        "strong": effects["strong"],
        "effect_sd": effects["effect_sd"],
        "efficacy_prob": effects["efficacy_prob"],
        "perturbation_efficacy_prob": label_prob,
        "perturbation_effect": label_effect,
        "shift": itt_shift,
        "responder_shift": responder_shift,
        "W": basal.loadings,
        "baseline": basal.baseline,
        "batch_offset": basal.batch_offset,
        "theta": basal.theta,
        "batches": _names("batch", n_batches, width=1),
        "control": control,
        "delimiter": delimiter,
        "latent_dim": latent_dim,
        "seed": seed,
        "n_truth_cells": n_truth_cells,
        "params": {k: (np.asarray(v, dtype=np.float64) if isinstance(v, tuple) else v) for k, v in params.items()},
    }
    if grn_truth is not None:
        adata.uns[TRUTH_KEY]["grn"] = grn_truth
    if guides is not None:
        n_targeting = len(labels) * n_guides
        adata.uns[TRUTH_KEY]["guides"] = names[:n_targeting]
        adata.uns[TRUTH_KEY]["guide_labels"] = [label for label in labels for _ in range(n_guides)]
        adata.uns[TRUTH_KEY]["guide_efficacy_prob"] = guides["rate"]
    if doublet_rate > 0 or low_quality_rate > 0:
        add_artifacts(adata, _rng(seed, _STREAM_ARTIFACTS), **artifact_args)
    return adata


def truth_shift_frame(adata: AnnData, *, responder: bool = False) -> pd.DataFrame:
    """True mean shifts of a simulated screen as a (perturbations x genes) DataFrame.

    Parameters
    ----------
    adata
        Output of :func:`simulate` (possibly after an h5ad round trip).
    responder
        Return the shift among responding cells (``uns["truth"]["responder_shift"]``) instead of the
        intent-to-treat shift over all cells that received the guide (``uns["truth"]["shift"]``).

    Returns
    -------
    DataFrame indexed by perturbation label, with one column per gene, of the true difference in the mean of
    ``log1p(1e4 * x / sum(x))`` between perturbed and control cells.

    Raises
    ------
    ValueError
        If ``adata`` carries no simulator truth.
    """
    if TRUTH_KEY not in adata.uns:
        raise ValueError(f"adata.uns has no {TRUTH_KEY!r} entry: this AnnData was not made by simulate().")
    truth = adata.uns[TRUTH_KEY]
    values = np.asarray(truth["responder_shift" if responder else "shift"], dtype=np.float64)
    index = pd.Index([str(p) for p in np.asarray(truth["perturbations"]).tolist()], name="perturbation")
    columns = pd.Index([str(g) for g in np.asarray(truth["genes"]).tolist()], name="gene")
    return pd.DataFrame(values, index=index, columns=columns)


# ----------------------------------------------------------------------------------------------------------------
# Steps of the generative process


def _draw_basal(
    rng: np.random.Generator,
    *,
    n_genes: int,
    latent_dim: int,
    n_batches: int,
    baseline_scale: float,
    loading_scale: float,
    batch_scale: float,
    dispersion: tuple[float, float],
    library_size: tuple[float, float],
) -> _Basal:
    """Global parameters of unperturbed cells: loadings, baseline, batch offsets, dispersions."""
    loadings = rng.normal(0.0, loading_scale, size=(latent_dim, n_genes))
    baseline = rng.normal(0.0, baseline_scale, size=n_genes)
    batch_offset = rng.normal(0.0, batch_scale, size=(n_batches, n_genes))
    theta = np.exp(rng.normal(dispersion[0], dispersion[1], size=n_genes))
    return _Basal(loadings, baseline, batch_offset, theta, (float(library_size[0]), float(library_size[1])))


def _draw_effects(
    rng: np.random.Generator,
    *,
    n_targets: int,
    n_genes: int,
    n_strong: int,
    density: float,
    effect_scale: tuple[float, float],
    knockout: float,
    efficacy: tuple[float, float],
) -> dict[str, np.ndarray]:
    """Sparse logit effects of each target (target ``t`` is gene ``t``) and per-target efficacies."""
    strong = np.zeros(n_targets, dtype=bool)
    strong[rng.choice(n_targets, size=n_strong, replace=False)] = True
    effect_sd = np.where(strong, effect_scale[0], effect_scale[1])
    mask = rng.random((n_targets, n_genes)) < density
    effect = rng.normal(size=(n_targets, n_genes)) * effect_sd[:, None]
    own = np.arange(n_targets)
    mask[own, own] = knockout != 0.0
    effect[own, own] = knockout
    effect = np.where(mask, effect, 0.0)
    efficacy_prob = rng.uniform(efficacy[0], efficacy[1], size=n_targets)
    return {"effect": effect, "mask": mask, "strong": strong, "effect_sd": effect_sd, "efficacy_prob": efficacy_prob}


def _draw_guides(
    rng: np.random.Generator, code: np.ndarray, label_prob: np.ndarray, *, n_guides: int, spread: float
) -> dict[str, np.ndarray]:
    """Guides of every cell, their response rates, the cells' efficacy ``e_n`` and each label's mixed rate.

    ``code`` is each cell's label (``P``: control). Guide ``p * n_guides + j`` is guide ``j`` of label ``p``; the
    control cells' guides follow the ``P * n_guides`` targeting ones. A label's cells are dealt to its guides in
    turn, in random order (numbers differ by at most one). ``logit rho_g = logit rho_p + spread * N(0, 1)``.
    """
    n_labels = label_prob.shape[0]
    p = np.clip(label_prob, 1e-6, 1 - 1e-6)
    logit = np.repeat(np.log(p) - np.log1p(-p), n_guides) + spread * rng.normal(size=n_labels * n_guides)
    rate = 1.0 / (1.0 + np.exp(-logit))
    guide = np.empty(code.shape[0], dtype=np.int64)
    for label in range(n_labels + 1):
        cells = rng.permutation(np.flatnonzero(code == label))
        guide[cells] = label * n_guides + np.arange(cells.shape[0]) % n_guides
    responds = rng.random(code.shape[0]) < np.append(rate, np.ones(n_guides))[guide]
    counts = np.bincount(guide, minlength=(n_labels + 1) * n_guides)[: n_labels * n_guides].reshape(n_labels, -1)
    weights = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    mixed = np.where(
        counts.sum(1) > 0, (weights * rate.reshape(n_labels, -1)).sum(1), rate.reshape(n_labels, -1).mean(1)
    )
    return {"guide": guide, "rate": rate, "responds": responds, "label_prob": mixed}


def _make_perturbations(
    rng: np.random.Generator, *, targets: list[str], n_combinations: int, delimiter: str
) -> tuple[list[str], np.ndarray]:
    """Perturbation labels (singles in target order, then sorted combinations) and their (P, T) bool design."""
    n_targets = len(targets)
    n_pairs = n_targets * (n_targets - 1) // 2
    if n_pairs <= 100_000:
        first, second = np.triu_indices(n_targets, k=1)
        chosen = rng.choice(n_pairs, size=n_combinations, replace=False)
        pairs = set(zip(first[chosen].tolist(), second[chosen].tolist(), strict=True))
    else:  # too many pairs to list: rejection sampling of a few distinct pairs
        pairs = set()
        while len(pairs) < n_combinations:
            a, b = sorted(rng.choice(n_targets, size=2, replace=False).tolist())
            pairs.add((a, b))
    pairs = sorted(pairs)
    labels = list(targets) + [f"{targets[a]}{delimiter}{targets[b]}" for a, b in pairs]
    design = np.zeros((len(labels), n_targets), dtype=bool)
    design[np.arange(n_targets), np.arange(n_targets)] = True
    for i, (a, b) in enumerate(pairs):
        design[n_targets + i, [a, b]] = True
    return labels, design


def _perturbation_effects(design: np.ndarray, effect: np.ndarray) -> np.ndarray:
    """Logit shift of a responding cell for each perturbation: effects of its targets add up."""
    n_targets = design.shape[1]
    out = np.empty((design.shape[0], effect.shape[1]))
    out[:n_targets] = effect  # singles come first, in target order
    for p in range(n_targets, design.shape[0]):
        out[p] = effect[design[p]].sum(axis=0)
    return out


def _assign_perturbations(
    rng: np.random.Generator,
    *,
    n_cells: int,
    n_targets: int,
    n_combinations: int,
    control_fraction: float,
    combination_fraction: float,
    label_prob: np.ndarray,
    n_batches: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Perturbation code (``P`` for control), efficacy ``e_n`` and batch of every cell, in random cell order."""
    n_labels = n_targets + n_combinations
    n_control, n_single, n_combo = _cell_counts(n_cells, control_fraction, combination_fraction, n_combinations)
    code = np.concatenate(
        [
            np.full(n_control, n_labels),
            np.arange(n_single) % n_targets,  # balanced over singles
            n_targets + np.arange(n_combo) % max(n_combinations, 1),
        ]
    )
    code = rng.permutation(code)
    responds = rng.random(n_cells) < np.append(label_prob, 1.0)[code]
    batch = rng.integers(n_batches, size=n_cells)
    return code, responds, batch


def _sample_counts(
    basal: _Basal, shift_table: np.ndarray, shift_code: np.ndarray, batch: np.ndarray, *, seed: int, n_jobs: int
) -> sp.csr_matrix:
    """NB counts of every cell, generated in chunks of cells and assembled into a CSR matrix.

    Cell ``n`` gets the logit shift ``shift_table[shift_code[n]]``. No dense (cells x genes) array is built beyond
    one chunk per thread.
    """
    n_cells, n_genes = len(shift_code), basal.n_genes

    def chunk(c: int, rows: slice) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rng = _rng(seed, _STREAM_COUNTS, c)
        mean, _ = _cell_means(basal, rng, batch[rows], shift_table[shift_code[rows]])
        x, _ = _sample_nb(rng, mean, basal.theta)
        nonzero = x > 0
        return nonzero.sum(axis=1), np.nonzero(nonzero)[1].astype(np.int32), x[nonzero].astype(np.float32)

    parts = list(_map_chunks(chunk, n_cells, n_genes, n_jobs))
    row_nnz = np.concatenate([p[0] for p in parts])
    indptr = np.zeros(n_cells + 1, dtype=np.int64)
    np.cumsum(row_nnz, out=indptr[1:])
    if indptr[-1] < np.iinfo(np.int32).max:
        indptr = indptr.astype(np.int32)
    indices = np.concatenate([p[1] for p in parts])
    data = np.concatenate([p[2] for p in parts])
    del parts
    return sp.csr_matrix((data, indices, indptr), shape=(n_cells, n_genes))


def _true_shifts(basal: _Basal, label_effect: np.ndarray, *, n_cells: int, seed: int, n_jobs: int) -> np.ndarray:
    """Population shift of mean ``log1p(1e4 x / sum x)``, responders of each perturbation vs control, (P, G).

    Monte Carlo over ``n_cells`` fresh cells shared by all arms (common random numbers): each fresh cell draws a
    basal state, library size, batch, NB gamma rates ``lam`` and control counts ``x ~ Poisson(lam)`` once. Under
    perturbation ``p`` its rates become ``lam * r`` with ``r = exp(delta_p) / sum_g(prop_g exp(delta_pg))``
    (``prop``: control proportions). Perturbed counts are coupled to the control ones, exactly in distribution,
    by thinning ``Binomial(x, r)`` where ``r < 1`` and superposition ``x + Poisson(lam (r - 1))`` where ``r > 1``.
    """
    n_labels, n_genes = label_effect.shape
    exp_effect = np.exp(label_effect)  # (P, G)

    def chunk(c: int, rows: slice) -> tuple[np.ndarray, np.ndarray]:
        rng = _rng(seed, _STREAM_TRUTH, c)
        n_rows = rows.stop - rows.start
        batch = rng.integers(basal.n_batches, size=n_rows)
        mean, prop = _cell_means(basal, rng, batch, None)
        x, lam = _sample_nb(rng, mean, basal.theta)
        control_sum = log_normalise(x).sum(axis=0)
        perturbed_sum = np.empty((n_labels, n_genes))
        for p in range(n_labels):
            ratio = exp_effect[p] / np.einsum("ng,g->n", prop, exp_effect[p])[:, None]  # (rows, G)
            down = (ratio < 1.0) & (x > 0)  # Binomial(0, r) = 0: skip empty entries
            xp = x.copy()
            xp[down] = rng.binomial(x[down], ratio[down])
            up = ratio > 1.0
            xp[up] += rng.poisson(lam[up] * (ratio[up] - 1.0))
            perturbed_sum[p] = log_normalise(xp).sum(axis=0)
        return control_sum, perturbed_sum

    control_sum = np.zeros(n_genes)
    perturbed_sum = np.zeros((n_labels, n_genes))
    for c_sum, p_sum in _map_chunks(chunk, n_cells, n_genes, n_jobs):  # summed in chunk order: deterministic
        control_sum += c_sum
        perturbed_sum += p_sum
    return (perturbed_sum - control_sum[None, :]) / n_cells


# ----------------------------------------------------------------------------------------------------------------
# Shared helpers


def _cell_means(
    basal: _Basal, rng: np.random.Generator, batch: np.ndarray, shift: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Fresh basal states and library sizes for ``len(batch)`` cells; NB means (rows, G) and proportions."""
    n_rows = len(batch)
    z = rng.normal(size=(n_rows, basal.loadings.shape[0]))
    log_library = rng.normal(basal.library_size[0], basal.library_size[1], size=n_rows)
    # einsum, not BLAS: OpenBLAS threads would busy-wait against the chunk threads (measured 2x slower)
    logits = np.einsum("nk,kg->ng", z, basal.loadings)
    logits += basal.baseline
    logits += basal.batch_offset[batch]
    if shift is not None:
        logits += shift
    logits -= logits.max(axis=1, keepdims=True)
    prop = np.exp(logits)
    prop /= prop.sum(axis=1, keepdims=True)
    return prop * np.exp(log_library)[:, None], prop


def _sample_nb(rng: np.random.Generator, mean: np.ndarray, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gamma-Poisson draw with the given means and per-gene inverse dispersion; returns counts and Poisson rates."""
    lam = rng.standard_gamma(np.broadcast_to(theta, mean.shape))
    lam *= mean / theta
    return rng.poisson(lam), lam


def _map_chunks(fn: Callable[[int, slice], Any], n_cells: int, n_genes: int, n_jobs: int) -> Iterator[Any]:
    """Apply ``fn(chunk_index, rows)`` over chunks of cells, in order, on ``n_jobs`` threads.

    The chunk size depends on ``n_genes`` only, so the random streams (keyed by chunk index) do not depend on
    ``n_jobs``. NumPy releases the GIL while drawing random numbers, so threads run in parallel.
    """
    rows = max(1, _CHUNK_ENTRIES // n_genes)
    chunks = [(c, slice(start, min(start + rows, n_cells))) for c, start in enumerate(range(0, n_cells, rows))]
    if n_jobs <= 1 or len(chunks) <= 1:
        yield from (fn(c, s) for c, s in chunks)
        return
    with ThreadPoolExecutor(max_workers=min(n_jobs, len(chunks))) as pool:
        yield from pool.map(lambda cs: fn(*cs), chunks)


def _rng(seed: int, *key: int) -> np.random.Generator:
    """Independent random stream ``key`` of ``seed``."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=key)))


def _names(prefix: str, n: int, *, width: int = 4) -> list[str]:
    """``prefix`` followed by zero-padded indices: ``G0000, G0001, ...``."""
    width = max(width, len(str(n - 1)))
    return [f"{prefix}{i:0{width}d}" for i in range(n)]


def _cell_counts(
    n_cells: int, control_fraction: float, combination_fraction: float, n_combinations: int
) -> tuple[int, int, int]:
    """Numbers of control, single-target and combination cells."""
    n_control = round(control_fraction * n_cells)
    n_combo = round(combination_fraction * n_cells) if n_combinations > 0 else 0
    return n_control, n_cells - n_control - n_combo, n_combo


# ----------------------------------------------------------------------------------------------------------------
# Argument validation


def _check_args(**args: Any) -> dict[str, Any]:
    """Validate the arguments of :func:`simulate`; return them resolved (``n_strong``, ``n_jobs``) as a dict."""
    for name, minimum in [
        ("n_cells", 1),
        ("n_genes", 1),
        ("n_targets", 1),
        ("n_combinations", 0),
        ("latent_dim", 0),
        ("n_batches", 1),
        ("n_truth_cells", 0),
        ("seed", 0),
    ]:
        _check_int(name, args[name], minimum)
    _check_int("n_guides", args["n_guides"], 0)
    _check_float("guide_spread", args["guide_spread"], 0.0, math.inf)
    n_targets, n_genes = args["n_targets"], args["n_genes"]
    if n_targets > n_genes:
        raise ValueError(
            f"n_targets ({n_targets}) must not exceed n_genes ({n_genes}): every target is a measured gene."
        )
    if args["n_strong"] is None:
        args["n_strong"] = (n_targets + 1) // 2
    _check_int("n_strong", args["n_strong"], 0)
    if args["n_strong"] > n_targets:
        raise ValueError(f"n_strong ({args['n_strong']}) must not exceed n_targets ({n_targets}).")
    n_pairs = n_targets * (n_targets - 1) // 2
    if args["n_combinations"] > n_pairs:
        raise ValueError(
            f"n_combinations ({args['n_combinations']}) exceeds the {n_pairs} distinct pairs of {n_targets} targets."
        )
    if args["n_jobs"] is None:
        args["n_jobs"] = os.cpu_count() or 1
    _check_int("n_jobs", args["n_jobs"], 1)

    for name in ["effect_density", "control_fraction", "combination_fraction"]:
        _check_float(name, args[name], 0.0, 1.0)
    for name in ["baseline_scale", "loading_scale", "batch_scale"]:
        _check_float(name, args[name], 0.0, math.inf)
    _check_float("knockout", args["knockout"], -math.inf, math.inf)
    if not 0.0 < args["control_fraction"] < 1.0:
        raise ValueError(f"control_fraction must lie strictly between 0 and 1, got {args['control_fraction']}.")
    if args["n_combinations"] > 0 and args["control_fraction"] + args["combination_fraction"] >= 1.0:
        raise ValueError(
            "control_fraction + combination_fraction must be below 1 so that single-target cells remain, got "
            f"{args['control_fraction']} + {args['combination_fraction']}."
        )
    args["effect_scale"] = _check_pair("effect_scale", args["effect_scale"], (0.0, math.inf), (0.0, math.inf))
    args["library_size"] = _check_pair("library_size", args["library_size"], (-math.inf, math.inf), (0.0, math.inf))
    args["dispersion"] = _check_pair("dispersion", args["dispersion"], (-math.inf, math.inf), (0.0, math.inf))
    args["efficacy"] = _check_pair("efficacy", args["efficacy"], (0.0, 1.0), (0.0, 1.0))
    if args["efficacy"][0] > args["efficacy"][1]:
        raise ValueError(f"efficacy must be a range (low, high) with low <= high, got {args['efficacy']}.")

    control, delimiter = args["control"], args["delimiter"]
    if not isinstance(control, str) or not control:
        raise ValueError(f"control must be a non-empty string, got {control!r}.")
    if not isinstance(delimiter, str) or not delimiter:
        raise ValueError(f"delimiter must be a non-empty string, got {delimiter!r}.")
    if delimiter in control:
        raise ValueError(f"The control label {control!r} must not contain the delimiter {delimiter!r}.")
    if any(ch == "G" or ch.isdigit() for ch in delimiter):
        raise ValueError(f"delimiter {delimiter!r} must not contain 'G' or digits: it would split gene names.")
    if control in _names("G", n_targets):
        raise ValueError(f"The control label {control!r} collides with a target name.")

    n_control, n_single, n_combo = _cell_counts(
        args["n_cells"], args["control_fraction"], args["combination_fraction"], args["n_combinations"]
    )
    if n_control < 1 or n_single < n_targets or n_combo < args["n_combinations"]:
        raise ValueError(
            f"n_cells={args['n_cells']} is too small: it gives {n_control} control, {n_single} single-target and "
            f"{n_combo} combination cells, but at least 1 control cell, {n_targets} single-target cells and "
            f"{args['n_combinations']} combination cells are needed (one per label)."
        )
    return args


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")


def _check_float(name: str, value: Any, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"{name} must be a number, got {value!r}.")
    if not (math.isfinite(value) and low <= value <= high):
        raise ValueError(f"{name} must be a finite number in [{low}, {high}], got {value!r}.")


def _check_pair(name: str, value: Any, first: tuple[float, float], second: tuple[float, float]) -> tuple[float, float]:
    try:
        pair = tuple(value)
    except TypeError:
        pair = ()
    if len(pair) != 2:
        raise ValueError(f"{name} must be a pair of numbers, got {value!r}.")
    _check_float(f"{name}[0]", pair[0], *first)
    _check_float(f"{name}[1]", pair[1], *second)
    return float(pair[0]), float(pair[1])
