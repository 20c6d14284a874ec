"""A known gene-regulatory network for the simulator: knockouts that propagate along sparse, acyclic edges.

Regulators are the first ``n_regulators`` genes (``G0000, ...``); the perturbation targets are the first
``n_targets`` of them, so every regulator is a measured gene and the remaining regulators are never perturbed. The
network ``A`` (regulators x genes) is sparse; edges between regulators follow a random topological order, so the
regulator sub-network is acyclic. A knockout removes one unit of the regulator's *activity* and lowers its own
mRNA by ``knockout`` on the logit scale; the activity change propagates ``n_steps`` steps::

    a_0 = -e_r                           (the knocked-out regulator loses its activity)
    a_{s+1} = a_s A_RR                   (a regulator's activity change = its log-expression change)
    delta_r = knockout * e_{gene(r)} + sum_{s < n_steps} a_s A      (logit shift of every gene)

``A_RR`` is ``A`` restricted to the regulators' own gene columns; an edge weight is the logit change of the target
gene per unit of the source's activity (positive: activator). This is the same map the model's ``grn`` block uses
(:mod:`pertpyro.module._grn`), so the truth is in the model's family.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData

_STREAM_GRN = 100
"""First element of the spawn key of the network's random stream (apart from the simulator's own streams)."""


def check_grn_args(
    *, n_genes: int, n_targets: int, n_regulators: int | None, density: float, n_steps: int, weight: tuple
) -> int:
    """Validate the network options of :func:`pertpyro.datasets.simulate`; return the number of regulators."""
    n_reg = n_targets if n_regulators is None else n_regulators
    if isinstance(n_reg, bool) or not isinstance(n_reg, int | np.integer) or not n_targets <= n_reg <= n_genes:
        raise ValueError(
            f"n_regulators must be an integer between n_targets ({n_targets}) and n_genes ({n_genes}), got "
            f"{n_regulators!r}: every target is a regulator and every regulator a measured gene."
        )
    if not 0.0 <= float(density) <= 1.0:
        raise ValueError(f"grn_density must lie in [0, 1], got {density!r}.")
    if isinstance(n_steps, bool) or not isinstance(n_steps, int | np.integer) or n_steps < 1:
        raise ValueError(f"grn_steps must be a positive integer, got {n_steps!r}.")
    weight = tuple(float(w) for w in weight)
    if len(weight) != 2 or not 0.0 <= weight[0] <= weight[1]:
        raise ValueError(
            f"grn_weight must be a range (low, high) of edge magnitudes, 0 <= low <= high, got {weight!r}."
        )
    return int(n_reg)


def draw_grn(
    rng: np.random.Generator, *, n_regulators: int, n_genes: int, density: float, weight: tuple[float, float]
) -> np.ndarray:
    """Sparse weighted adjacency ``(n_regulators, n_genes)``; regulator ``r`` is gene ``r``, regulator edges acyclic.

    Each (regulator, gene) pair is an edge with probability ``density``; among regulators only pairs that follow a
    random topological order may be edges (so half of them are candidates). Magnitudes are uniform on ``weight``,
    signs are random.
    """
    order = rng.permutation(n_regulators)
    rank = np.empty(n_regulators, dtype=np.int64)
    rank[order] = np.arange(n_regulators)
    present = rng.random((n_regulators, n_genes)) < density
    allowed = np.ones((n_regulators, n_genes), dtype=bool)
    allowed[:, :n_regulators] = rank[:, None] < rank[None, :]  # source before target: acyclic, no self edges
    magnitude = rng.uniform(weight[0], weight[1], size=(n_regulators, n_genes))
    sign = np.where(rng.random((n_regulators, n_genes)) < 0.5, -1.0, 1.0)
    return np.where(present & allowed, magnitude * sign, 0.0)


def propagate(adjacency: np.ndarray, *, knockout: float, n_steps: int) -> np.ndarray:
    """Logit shift of every gene when each regulator is knocked out, ``(n_regulators, n_genes)`` (module docstring)."""
    n_reg, n_genes = adjacency.shape
    a_rr = adjacency[:, :n_reg]
    activity = -np.eye(n_reg)
    total = np.zeros((n_reg, n_reg))
    for _ in range(n_steps):
        total += activity
        activity = activity @ a_rr
    out = total @ adjacency
    out[np.arange(n_reg), np.arange(n_reg)] += knockout
    return out


def simulate_grn(
    seed: int,
    *,
    n_targets: int,
    n_genes: int,
    n_regulators: int,
    density: float,
    n_steps: int,
    weight: tuple,
    knockout: float,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Draw the network; return the targets' effects ``(T, G)``, their mask, and the truth entry ``uns["truth"]["grn"]``.

    The truth holds ``source``, ``target`` (gene names), ``weight`` of every edge, ``regulators`` (names),
    ``adjacency`` (regulators x genes, weights), ``regulator_effect`` (regulators x genes: the logit shift of a
    knockout of each regulator, perturbed or not) and ``n_steps``.
    """
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(_STREAM_GRN,))))
    adjacency = draw_grn(rng, n_regulators=n_regulators, n_genes=n_genes, density=density, weight=weight)
    regulator_effect = propagate(adjacency, knockout=knockout, n_steps=n_steps)
    effect = regulator_effect[:n_targets]
    width = max(4, len(str(n_genes - 1)))
    genes = [f"G{i:0{width}d}" for i in range(n_genes)]
    src, dst = np.nonzero(adjacency)
    truth = {
        "source": [genes[i] for i in src],
        "target": [genes[j] for j in dst],
        "weight": adjacency[src, dst],
        "regulators": genes[:n_regulators],
        "adjacency": adjacency,
        "regulator_effect": regulator_effect,
        "n_steps": int(n_steps),
    }
    return effect, effect != 0.0, truth


def grn_edges(adata: AnnData) -> pd.DataFrame:
    """True edges of a screen simulated with ``grn=True`` as a DataFrame ``(source, target, weight)``."""
    truth = adata.uns.get("truth", {}).get("grn")
    if truth is None:
        raise ValueError("adata.uns['truth'] has no 'grn' entry: simulate the screen with grn=True.")
    return pd.DataFrame(
        {
            "source": [str(s) for s in np.asarray(truth["source"]).tolist()],
            "target": [str(t) for t in np.asarray(truth["target"]).tolist()],
            "weight": np.asarray(truth["weight"], dtype=np.float64),
        }
    )
