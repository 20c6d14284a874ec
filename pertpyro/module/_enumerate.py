"""Per-cell log joint densities with the discrete per-cell sites enumerated by brute force.

The queries that need a cell's marginal likelihood or the posterior of one of its discrete states (the IWELBO,
:func:`pertpyro.module._artifacts.artifact_posterior`) replay the model once per combination of values of the
enumerated sites (``efficacy``, ``artifact``, ``artifact_kind``: at most 2 x 2 x 2 replays), each conditioned on the
same draw of the continuous latents, and sum the log densities of every site in the ``cells`` plate. The result is
exact in the discrete states; training sums the same states out inside the ELBO (``CellEnumELBO``).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import torch
from pyro import poutine

from pertpyro.module.sites import ARTIFACT, ARTIFACT_KIND, CELLS_PLATE, EFFICACY


def enumerated_sites(program: torch.nn.Module, *, labels_observed: bool) -> list[str]:
    """Names of the discrete per-cell sites to enumerate for ``program``, in a fixed order.

    ``artifact`` is left out when it is observed (the observed artifact mode with labels given): its log
    probability at the label then enters the joint like any observed site.
    """
    sites = [EFFICACY] if program.use_efficacy else []
    block = getattr(program, "artifact_block", None)
    if block is not None:
        if not (block.mode == "observed" and labels_observed):
            sites.append(ARTIFACT)
        sites.append(ARTIFACT_KIND)
    return sites


def _in_cells_plate(site: dict) -> bool:
    return any(frame.name == CELLS_PLATE for frame in site["cond_indep_stack"])


def cell_log_joint(
    program: torch.nn.Module,
    args: tuple,
    latents: Mapping[str, torch.Tensor],
    sites: Sequence[str],
) -> torch.Tensor:
    """``log p(...)`` of every site in the cells plate, per cell, for each combination of values of ``sites``.

    Parameters
    ----------
    program
        The model.
    args
        Model arguments of a standalone minibatch (:func:`pertpyro.data._loader.standalone_args`).
    latents
        Values the model is conditioned on (the continuous latents: ``z_basal`` and the global sites).
    sites
        Binary per-cell sites to enumerate (values 0 and 1 for every cell).

    Returns
    -------
    Tensor ``(2, ..., 2, B)`` with one leading dimension per entry of ``sites`` (in that order): the sum of the
    log densities of all sample sites in the cells plate (observed and conditioned ones, e.g. ``z_basal``,
    ``perturbation``, ``library``, counts and the enumerated sites themselves), all else fixed at ``latents``.
    """
    n = args[1].shape[0]
    terms = []
    for values in itertools.product((0.0, 1.0), repeat=len(sites)):
        data = dict(latents) | {name: torch.full((n,), value) for name, value in zip(sites, values, strict=True)}
        trace = poutine.trace(poutine.condition(program, data=data)).get_trace(*args)
        total = torch.zeros(n)
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or site["infer"].get("_do_not_score") or not _in_cells_plate(site):
                continue
            if name == CELLS_PLATE:
                continue
            total = total + site["fn"].log_prob(site["value"])
        terms.append(total)
    return torch.stack(terms).reshape((2,) * len(sites) + (n,))


__all__ = ["cell_log_joint", "enumerated_sites"]
