"""Per-cell posterior that the knockout took effect, over every cell of a data set, chunk by chunk."""

from __future__ import annotations

import numpy as np
import torch

from pertpyro._settings import local_params, seeded
from pertpyro.data._loader import CellData, standalone_args
from pertpyro.module._efficacy import efficacy_posterior
from pertpyro.module._program import PerturbationProgram
from pertpyro.module._types import GuideLike


@torch.no_grad()
def efficacy_probabilities(
    program: PerturbationProgram,
    guide: GuideLike,
    data: CellData,
    *,
    n_samples: int = 30,
    batch_size: int = 2048,
    seed: int = 0,
) -> np.ndarray:
    """``P(efficacy = 1 | x, library)`` of every cell of ``data`` (:func:`pertpyro.module._efficacy.efficacy_posterior`).

    Control cells get ``NaN`` (they received no targeting guide); cells whose targets all lack escapers
    (``efficacy_targets``) get 1, the model's statement about them.
    """
    out = np.full(len(data), np.nan, dtype=np.float64)
    labels = data.label_design  # (labels, T): one row per distinct label, indexed by the cells' codes
    perturbed = (labels.sum(1) > 0)[data.label_codes]
    escapers = program.efficacy_targets
    can_escape = perturbed if escapers is None else (labels[:, escapers.numpy()].sum(1) > 0)[data.label_codes]
    out[perturbed & ~can_escape] = 1.0
    cells = np.flatnonzero(can_escape)
    with seeded(seed), local_params():
        for start in range(0, len(cells), batch_size):
            rows = cells[start : start + batch_size]
            args = standalone_args(data[rows])
            out[rows] = efficacy_posterior(program, guide, args, n_samples=n_samples).numpy()
    return out


__all__ = ["efficacy_probabilities"]
