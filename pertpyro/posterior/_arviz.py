"""``arviz.InferenceData`` export of a trained :class:`~pertpyro.PerturbationModel`.

Groups and variables (dims in brackets; the draws of the guide are independent, split into ``chains`` chains):

- ``posterior``: ``effect`` [target, gene] (the logit effect of each target on each gene), ``effect_mask``
  [target, gene] when the model has sparse effects, ``latent_effect`` [target, latent] when it has latent effects,
  optionally ``ate`` [perturbation, gene] (draws of
  ``model.ate``) and ``z_basal`` [cell, latent] (basal states of the checked cells);
- ``constant_data``: point-estimated (empirical-Bayes) parameters, not sampled: ``efficacy_rate`` [target] (posterior
  median of the fraction of cells in which the knockout takes), ``efficacy_guide_rate`` [guide] (with per-guide
  rates: each targeting guide's), ``library_effect`` [target], ``effect_prior_scale`` [gene], ``dispersion`` [gene];
- ``posterior_predictive`` / ``observed_data`` (when held-out cells are given): ``gene_mean`` [gene], the mean of
  ``log1p(1e4 x / sum x)`` over the cells, and ``zero_fraction`` [gene], the fraction of zero counts; simulated
  by replaying the model on each cell's basal state drawn from the guide (its observed perturbation, depth and
  batch; ``efficacy`` drawn from its prior), one draw per posterior sample. ``az.plot_ppc`` compares them.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import numpy as np
import torch
from anndata import AnnData
from pyro import poutine

from pertpyro._settings import local_params, seeded
from pertpyro.causal._counterfactual import abduct, intervene
from pertpyro.causal._population import subsample_rows, subset_batch
from pertpyro.data._loader import CellData, standalone_args
from pertpyro.data._registry import targeting_guides
from pertpyro.data._statistics import log_normalise
from pertpyro.module.sites import EFFECT, EFFECT_MASK, LATENT_EFFECT, Z_BASAL
from pertpyro.posterior._protocol import FittedModel, require_trained

PPC_VARIABLES = ("gene_mean", "zero_fraction")


def import_arviz() -> ModuleType:
    """Import ArviZ without its refactoring ``FutureWarning`` (tests turn warnings into errors)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module="arviz")
        import arviz

    return arviz


def _summaries(counts: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"gene_mean": log_normalise(counts).mean(0), "zero_fraction": (counts == 0).float().mean(0)}


@torch.no_grad()
def posterior_predictive_summaries(
    model: FittedModel,
    cells: AnnData,
    *,
    n_samples: int = 100,
    max_cells: int | None = 2000,
    seed: int = 0,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per-gene summaries of observed cells and of replicated data, one replicate per posterior draw.

    Parameters
    ----------
    model
        A trained model.
    cells
        Cells to check (held-out cells: the check then also tests generalisation).
    n_samples
        Posterior draws.
    max_cells
        Subsample the cells to at most this many.
    seed
        Seed of the subsample and the draws.

    Returns
    -------
    ``(replicated, observed)``: dicts with ``gene_mean`` and ``zero_fraction``, arrays ``(n_samples, G)`` and
    ``(G,)``.
    """
    data = CellData(cells, model.registry)
    batch = subset_batch(data, subsample_rows(np.arange(len(data)), max_cells, seed))
    observed = {k: v.numpy() for k, v in _summaries(batch["counts"]).items()}
    replicated = {k: np.empty((n_samples, model.registry.n_genes), np.float32) for k in PPC_VARIABLES}
    with seeded(seed), local_params():
        for s in range(n_samples):
            counts = intervene(model.program, abduct(model.guide, batch), batch, {})
            for key, value in _summaries(counts).items():
                replicated[key][s] = value.numpy()
    return replicated, observed


@torch.no_grad()
def _global_draws(model: FittedModel, n_samples: int, cells: dict[str, torch.Tensor] | None) -> dict[str, np.ndarray]:
    """Draws of the guide's global sites (and ``z_basal`` of ``cells``), stacked ``(n_samples, ...)``."""
    if cells is None:  # the global sites do not depend on the cells: any one cell makes the guide run
        cells = model.cell_data[np.array([0])]
        cells["idx"] = torch.arange(1)
        names: tuple[str, ...] = (EFFECT, EFFECT_MASK, LATENT_EFFECT)
    else:
        names = (EFFECT, EFFECT_MASK, LATENT_EFFECT, Z_BASAL)
    args = standalone_args(cells)
    out: dict[str, list[np.ndarray]] = {}
    with local_params():
        for _ in range(n_samples):
            trace = poutine.trace(model.guide).get_trace(*args)
            for name in names:
                if name in trace.nodes:
                    out.setdefault(name, []).append(np.asarray(trace.nodes[name]["value"]))
    return {name: np.stack(values) for name, values in out.items()}


def to_inference_data(
    model: FittedModel,
    *,
    n_samples: int = 200,
    heldout: AnnData | None = None,
    ate: Sequence[str] | None = None,
    latent: bool = False,
    max_cells: int | None = 2000,
    chains: int = 2,
    seed: int = 0,
) -> Any:
    """The posterior of a trained model as ``arviz.InferenceData`` with named dims and coords.

    Parameters
    ----------
    model
        A trained :class:`~pertpyro.PerturbationModel`.
    n_samples
        Posterior draws (one chain of independent draws from the guide).
    heldout
        Cells for the posterior predictive check (``posterior_predictive`` and ``observed_data`` groups); ``None``
        skips it.
    ate
        Perturbation labels whose ATE draws (``model.ate_draws``, ``n_samples`` draws) go into the posterior as
        ``ate`` [perturbation, gene].
    latent
        Also store ``z_basal`` [cell, latent] of the ``heldout`` cells (needs ``heldout``).
    max_cells
        Subsample of the held-out cells (and of the ATE population).
    chains
        The independent draws are split into this many "chains" of equal length (so that ArviZ's split R-hat and
        effective sample sizes are defined; for independent draws R-hat is about 1); must divide ``n_samples``.
    seed
        Seed of every draw.

    Returns
    -------
    ``arviz.InferenceData``; see the module docstring for the groups.
    """
    require_trained(model)
    az = import_arviz()
    if n_samples < 1:
        raise ValueError(f"n_samples must be positive, got {n_samples}.")
    if chains < 1 or n_samples % chains:
        raise ValueError(f"chains ({chains}) must be positive and divide n_samples ({n_samples}).")
    if latent and heldout is None:
        raise ValueError("latent=True stores the basal states of the held-out cells: give heldout cells too.")
    registry = model.registry
    coords: dict[str, list[str]] = {
        "target": list(registry.targets),
        "gene": list(registry.genes),
        "latent": [f"z{k}" for k in range(model.program.latent_dim)],
    }
    dims: dict[str, list[str]] = {
        EFFECT: ["target", "gene"],
        EFFECT_MASK: ["target", "gene"],
        LATENT_EFFECT: ["target", "latent"],
        Z_BASAL: ["cell", "latent"],
        "ate": ["perturbation", "gene"],
        "efficacy_rate": ["target"],
        "efficacy_guide_rate": ["guide"],
        "library_effect": ["target"],
        "effect_prior_scale": ["gene"],
        "dispersion": ["gene"],
        "gene_mean": ["gene"],
        "zero_fraction": ["gene"],
    }
    cell_batch = None
    if heldout is not None and latent:
        rows = subsample_rows(np.arange(heldout.n_obs), max_cells, seed)
        cell_batch = subset_batch(CellData(heldout, registry), rows)
        coords["cell"] = [str(name) for name in heldout.obs_names[rows]]
    with seeded(seed):
        posterior = _global_draws(model, n_samples, cell_batch)
    if ate is not None:
        labels = [ate] if isinstance(ate, str) else [str(label) for label in ate]
        coords["perturbation"] = labels
        posterior["ate"] = model.ate_draws(labels, n_samples=n_samples, max_cells=max_cells, seed=seed)
    program = model.program
    constant = {
        "efficacy_rate": model.guide.efficacy_median().detach().numpy(),
        "library_effect": program.library_effect.detach().numpy(),
        "effect_prior_scale": program.effect_prior_scale().detach().numpy(),
        "dispersion": program.log_theta.exp().detach().numpy(),
    }
    guide_rates = getattr(model.guide, "guide_rates", None)
    if guide_rates is not None:
        constant["efficacy_guide_rate"] = guide_rates.median().detach().numpy()
        coords["guide"] = [g for g, _ in targeting_guides(registry)]

    def as_chains(values: np.ndarray) -> np.ndarray:
        return values.reshape(chains, n_samples // chains, *values.shape[1:])

    groups: dict[str, Any] = {"posterior": {k: as_chains(v) for k, v in posterior.items()}, "constant_data": constant}
    if heldout is not None:
        replicated, observed = posterior_predictive_summaries(
            model, heldout, n_samples=n_samples, max_cells=max_cells, seed=seed
        )
        groups["posterior_predictive"] = {k: as_chains(v) for k, v in replicated.items()}
        groups["observed_data"] = observed
    used = {name for group in groups.values() for name in group}
    return az.from_dict(**groups, coords=coords, dims={k: v for k, v in dims.items() if k in used})
