"""Starting values of the program's parameters, computed once from the training data (method of moments)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence, Sized
from typing import Any

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from pertpyro.data._datasets import collectri
from pertpyro.data._loader import CellData
from pertpyro.data._registry import Registry, design_matrix, targeting_guides
from pertpyro.data._statistics import strong_perturbations
from pertpyro.data._stream import CountStatistics
from pertpyro.module._grn import GRNPrior, build_grn_prior

logger = logging.getLogger(__name__)


def gene_log_share(gene_totals: np.ndarray) -> torch.Tensor:
    totals = gene_totals + 0.5
    return torch.from_numpy(np.log(totals / totals.sum())).float()


def library_moments(data: CellData, n_batches: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and sd of the log library size per batch (the starting point of the library model)."""
    log_lib = np.log(data.library)
    codes = data.batch_index
    locs, scales = [], []
    for b in range(max(n_batches, 1)):
        values = log_lib[codes == b] if np.any(codes == b) else log_lib
        locs.append(values.mean())
        scales.append(values.std() if len(values) > 1 else 0.5)
    return torch.tensor(locs), torch.tensor(scales)


def initial_effects(stats: CountStatistics, response_rate: float) -> torch.Tensor:
    """Method-of-moments estimates of the effects: the start of the guide's effect means and of ``sigma_g``.

    Per target, the log ratio of each gene's expression share in its cells to that in control cells, inverted
    through the responder/escaper mixture with response rate ``response_rate``. ``stats`` are the count sums of
    :meth:`CellData.statistics`. Adam moves a mean by about the learning rate per step, so strong effects (logit
    shifts of 2-3) started at zero would still be short of their value when early stopping ends training, with a
    narrow posterior around the wrong value.
    """
    gene_sums, control_sums = stats.target_gene_sums, stats.control_gene_sums  # (T, G), (G,)
    share = (gene_sums + 0.5) / (gene_sums + 0.5).sum(1, keepdims=True)
    control_share = (control_sums + 0.5) / (control_sums + 0.5).sum()
    ratio = share / control_share
    responder_ratio = np.maximum(ratio - (1 - response_rate), 0.05) / response_rate
    return torch.from_numpy(np.clip(np.log(responder_ratio), -4.0, 4.0)).float()


EFFICACY_AUTO = "auto"
"""``efficacy`` setting: escapers possible for every target, under a learned prior leaning toward full response."""


def resolve_efficacy(
    efficacy: bool | str | Sequence[str], adata: AnnData, registry: Registry
) -> bool | str | list[str]:
    """``efficacy`` as stored: a bool, ``"auto"``, or the targets with escapers (``"strong"`` resolved on ``adata``)."""
    if isinstance(efficacy, bool):
        return efficacy
    if isinstance(efficacy, str):
        if efficacy == EFFICACY_AUTO:
            return efficacy
        if efficacy != "strong":
            raise ValueError(f"efficacy must be 'auto', True, False, 'strong' or a list of targets, got {efficacy!r}.")
        strong = set(strong_perturbations(adata))
        return [t for t in registry.targets if t in strong]  # single-target labels with a clear shift
    return [str(t) for t in efficacy]


def efficacy_targets(efficacy: bool | str | Sequence[str], targets: Sequence[str]) -> torch.Tensor | None:
    """Boolean ``(T,)`` of the targets with escapers when ``efficacy`` lists them; ``None`` for a bool or ``"auto"``."""
    if isinstance(efficacy, bool | str):
        return None
    listed = set(efficacy)
    unknown = sorted(listed - set(targets))
    if unknown:
        raise ValueError(f"efficacy lists targets absent from the data: {unknown}.")
    return torch.tensor([t in listed for t in targets])


def efficacy_prior(efficacy: bool | str | Sequence[str]) -> str:
    """The program's prior of the response rates: learned for ``"auto"``, otherwise uniform."""
    return "learned" if efficacy == EFFICACY_AUTO else "uniform"


BLOCK_OPTIONS: dict[str, tuple[str, ...]] = {
    "grn": (
        "grn_prior",
        "grn_regulators",
        "grn_steps",
        "grn_density",
        "grn_prior_inclusion",
        "grn_weight_scale",
        "grn_init_lasso",
    ),
    "sparse_effects": ("mask_prior",),
    "artifacts": ("artifact_key", "artifact_evidence"),
}
"""The options that only one block reads, by the switch that turns the block on."""


def _is_set(value: Any, default: Any) -> bool:
    """Whether an option was given a value of its own: not its default, ``None`` or an empty collection."""
    if value is None or value is default:
        return False
    if isinstance(value, Sized) and not isinstance(value, str) and len(value) == 0:
        return False
    try:
        return bool(value != default)
    except (TypeError, ValueError):  # arrays and frames compare elementwise: any such value is a setting
        return True


def orphan_options(options: Mapping[str, Any], defaults: Mapping[str, Any]) -> list[str]:
    """Options in ``options`` set for a block whose switch is off (``False`` or ``None``), in a fixed order.

    Options that are absent count as their ``defaults``.
    """
    return [
        name
        for switch, names in BLOCK_OPTIONS.items()
        if options.get(switch, defaults[switch]) in (False, None)
        for name in names
        if _is_set(options.get(name, defaults[name]), defaults[name])
    ]


def check_block_options(options: Mapping[str, Any], defaults: Mapping[str, Any]) -> None:
    """A ``ValueError`` naming every option set for a block that is off (it would be ignored)."""
    orphans = orphan_options(options, defaults)
    if orphans:
        blocks = {name: switch for switch, names in BLOCK_OPTIONS.items() for name in names}
        hints = {
            "grn": "grn=True",
            "sparse_effects": "sparse_effects=True",
            "artifacts": "artifacts='latent' or 'observed'",
        }
        needed = ", ".join(f"{name} needs {hints[blocks[name]]}" for name in orphans)
        raise ValueError(f"Options of a block that is off would be ignored: {needed} (or leave them at their default).")


def resolve_per_guide(per_guide: bool, registry: Registry, efficacy: bool | str | Sequence[str]) -> bool:
    """Whether the model has per-guide response rates; a ``ValueError`` where they cannot be."""
    if per_guide and efficacy is False:
        raise ValueError("efficacy_per_guide needs the efficacy block: it is off (efficacy=False).")
    if per_guide and registry.guide_key is None:
        raise ValueError(
            "efficacy_per_guide needs a guide column: register it with setup_anndata(..., guide_key='guide')."
        )
    return bool(per_guide)


def guide_table(registry: Registry, data: CellData) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-guide response rates' inputs: the targets of each targeting guide ``(n_guides, T)`` and its cells.

    Raises a ``ValueError`` when the registry has no guide column or no targeting guide.
    """
    if registry.guide_key is None:
        raise ValueError(
            "efficacy_per_guide needs a guide column: register it with setup_anndata(..., guide_key='guide')."
        )
    guides = targeting_guides(registry)
    if not guides:
        raise ValueError("efficacy_per_guide: the registered guide column has no targeting guide.")
    design = torch.from_numpy(design_matrix([label for _, label in guides], registry))
    rows = data.guide if data.guide is not None else np.full(len(data), -1)
    cells = np.bincount(rows[rows >= 0], minlength=len(guides)).astype(np.float32)
    return design, torch.from_numpy(cells)


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
        moment_effects=effects.numpy(),
        has_cells=has_cells,
        lasso=kw.get("grn_init_lasso"),
    )


def read_network(network: pd.DataFrame | str | None) -> pd.DataFrame | None:
    """A prior network given as a DataFrame, ``"collectri"`` (the shipped CollecTRI) or a CSV path (configs)."""
    if network is None or isinstance(network, pd.DataFrame):
        return network
    if isinstance(network, str):
        if network.lower() == "collectri":
            return collectri()
        return pd.read_csv(network)
    raise ValueError(f"grn_prior must be a DataFrame, 'collectri' or a CSV path, got {type(network).__name__}.")
