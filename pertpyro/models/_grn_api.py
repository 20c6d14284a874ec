"""The ``grn`` block as seen from :class:`~pertpyro.models.PerturbationModel`: building it, the edge table, edge ``do``.

Kept apart from :mod:`pertpyro.models._model` so that the model's methods stay thin wrappers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch

from pertpyro._keys import GRN_KEY
from pertpyro.data._loader import CellData
from pertpyro.data._registry import Registry
from pertpyro.models._grn import GRNPrior, adjacency_action, build_grn_prior, edge_intervention, edge_table, varp_matrix
from pertpyro.models._sites import ADJACENCY

logger = logging.getLogger(__name__)


def build_grn(
    registry: Registry, data: CellData, effects: torch.Tensor, kw: Mapping[str, Any]
) -> tuple[GRNPrior, list[str]]:
    """The model side of the block from the model's settings ``kw`` (``grn_*`` keys) and moment estimates.

    ``effects`` are the per-target moment estimates ``(T, G)`` of the log expression ratio; each target's own-gene
    entry (where the target has training cells) starts its ``direct`` knockout effect.
    """
    genes = list(registry.genes)
    gene_index = pd.Index(genes).get_indexer(list(registry.targets))
    has_cells = data.target_frequency() > 0
    own = np.full(registry.n_targets, np.nan, dtype=np.float32)
    ok = (gene_index >= 0) & has_cells
    own[ok] = effects.numpy()[np.flatnonzero(ok), gene_index[ok]]
    if not (gene_index >= 0).any() and not kw.get("grn_regulators"):
        logger.warning(
            "grn=True but no target is a measured gene and no grn_regulators are given: the network has only "
            "target -> gene edges (one step), and a target without training cells cannot be predicted."
        )
    return build_grn_prior(
        registry.targets,
        genes,
        network=read_network(kw.get("grn_prior")),
        extra_regulators=kw.get("grn_regulators"),
        density=kw["grn_density"],
        prior_inclusion=kw["grn_prior_inclusion"],
        n_steps=kw["grn_steps"],
        weight_scale=kw["grn_weight_scale"],
        own_effect=own,
    )


def read_network(network: pd.DataFrame | str | None) -> pd.DataFrame | None:
    """A prior network given as a DataFrame, ``"collectri"`` (the shipped CollecTRI) or a CSV path (configs)."""
    if network is None or isinstance(network, pd.DataFrame):
        return network
    if isinstance(network, str):
        if network.lower() == "collectri":
            from pertpyro.data._datasets import collectri

            return collectri()
        return pd.read_csv(network)
    raise ValueError(f"grn_prior must be a DataFrame, 'collectri' or a CSV path, got {type(network).__name__}.")


def _check_grn(model: Any) -> None:
    if getattr(model.program, "grn", None) is None:
        raise ValueError("This model has no GRN block: build it with PerturbationModel(..., grn=True).")


def grn_table(model: Any, threshold: float | None = None, *, ci: float = 0.9, write_varp: bool = False) -> pd.DataFrame:
    """Edges of a trained model's network (see :meth:`PerturbationModel.grn`)."""
    _check_grn(model)
    model._check_trained()
    genes = list(model.registry.genes)
    table = edge_table(model.guide.grn, model.program.grn, model.regulators, genes, ci=ci, threshold=threshold)
    if write_varp:
        if not any(r in set(genes) for r in model.regulators):
            raise ValueError("No regulator is a measured gene: there is no gene x gene matrix to write to varp.")
        full = table if threshold is None else grn_table(model, None, ci=ci)
        model.adata.varp[GRN_KEY] = varp_matrix(full, genes)
    return table


def resolve_edge_do(
    model: Any, spec: Mapping[Any, Any]
) -> Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
    """``{(source, target): 0 or 1}`` as a function of each draw's latents giving the ``adjacency`` intervention."""
    _check_grn(model)
    where, value = edge_intervention(spec, model.regulators, list(model.registry.genes))
    return adjacency_action(where, value)


def regulator_effects(model: Any, *, n_samples: int = 100, seed: int = 0) -> np.ndarray:
    """Posterior draws of the logit shift of every gene under each regulator's knockout, ``(S, R, G)``."""
    _check_grn(model)
    from pyro import poutine

    from pertpyro._settings import local_params, seeded
    from pertpyro.models._sites import ADJACENCY_WEIGHT

    out = []
    with seeded(seed), local_params(), torch.no_grad():
        for _ in range(n_samples):
            trace = poutine.trace(model.guide.grn).get_trace()
            weighted = trace.nodes[ADJACENCY]["value"] * trace.nodes[ADJACENCY_WEIGHT]["value"]
            out.append(model.program.grn.regulator_effects(weighted).numpy())
    return np.stack(out)
