"""Each label's shift as a sample of its own cells shows it, from the basal states the fit gave those cells.

:func:`pertpyro.causal._ate.label_shift_draws` draws the basal states of every arm from one population (control
cells): the causal effect under the model, in which basal state and perturbation are independent. A fit does not
quite honour that independence: the posterior basal states of a knockout's cells carry part of its effect (on the
shipped Papalexi screen 10-23% of a strong knockout's shift), and a prediction over control cells' basal states
misses that part. In a randomised screen the basal states of a label's cells and of control cells share one
distribution, so a systematic difference between the two is effect, not a property of the cells.

:func:`own_cell_shifts` predicts the shift a new sample of a label's cells will show against control cells: the
model's expected ``log1p(1e4 counts / depth)`` of the label's own training cells under ``do(label)``, each at its
own posterior basal state, minus that of the control cells under ``do(control)`` (count noise and the response
summed out analytically, :mod:`pertpyro.causal._analytic`). Both arms keep their cells' batch make-up.

A label's cells are taken at their own sequencing depths, moved together so that their mean log depth differs from
the control cells' by the empirical-Bayes estimate of the label's depth shift (:func:`shrunk_depth_shifts`), not by
the raw difference: depth moves ``log1p(1e4 x / sum x)`` of every gene through its zeros, and the raw difference of
a label with few cells is mostly noise (on the shipped screen it does not replicate between training and held-out
cells, except for the strong interferon knockouts).
"""

from __future__ import annotations

import numpy as np
import torch

from pertpyro._settings import seeded
from pertpyro.causal._ate import simulate_label_means
from pertpyro.data._statistics import MIN_LABELS_FOR_PRIOR, normal_shrinkage_weights
from pertpyro.module._program import PerturbationProgram
from pertpyro.module._types import GuideLike


def shrunk_depth_shifts(log_depth: np.ndarray, labels: np.ndarray, control: str) -> dict[str, tuple[float, float]]:
    """Raw and empirical-Bayes shrunk shift of each label's mean log depth against the control cells.

    The raw shift ``d_t`` of a label with ``n_t`` cells has sampling variance ``s2_t = v_t / n_t + v_c / n_c`` (``v``
    the within-group variance of the log depth); the shrunk shift is ``d_t`` times the weight of
    :func:`pertpyro.data._statistics.normal_shrinkage_weights` over the labels with two or more cells (with too few
    such labels the raw shifts are kept). Labels with one cell get a shrunk shift of 0.

    Returns
    -------
    ``{label: (raw, shrunk)}`` for every non-control label.
    """
    reference = log_depth[labels == control]
    reference_var = reference.var(ddof=1) / len(reference) if len(reference) > 1 else 0.0
    names = np.unique(labels[labels != control])
    raw, variance = np.zeros(len(names)), np.full(len(names), np.inf)
    for i, label in enumerate(names):
        values = log_depth[labels == label]
        raw[i] = values.mean() - reference.mean()
        if len(values) > 1:
            variance[i] = values.var(ddof=1) / len(values) + reference_var
    finite = np.isfinite(variance)
    weight = np.zeros(len(names))
    weight[finite] = normal_shrinkage_weights(raw[finite], variance[finite])
    if finite.sum() < MIN_LABELS_FOR_PRIOR:
        weight[:] = 1.0
    return {str(label): (float(r), float(r * w)) for label, r, w in zip(names, raw, weight, strict=True)}


@torch.no_grad()
def own_cell_shifts(
    program: PerturbationProgram,
    guide: GuideLike,
    populations: list[dict[str, torch.Tensor]],
    designs: torch.Tensor,
    control: dict[str, torch.Tensor],
    *,
    n_samples: int,
    seed: int = 0,
) -> torch.Tensor:
    """Posterior-mean shift of each label's own cells against the control cells, ``(labels, genes)``.

    Parameters
    ----------
    program, guide
        The trained model and guide.
    populations
        Each label's own training cells, one standalone minibatch dict per label
        (:func:`pertpyro.causal._population.subset_batch`).
    designs
        The labels' multi-hot designs ``(L, T)``.
    control
        The control cells (standalone minibatch dict).
    n_samples
        Posterior draws per arm (each abducts the cells' basal states anew).
    seed
        Seed of the draws (the global RNG state is left untouched).
    """
    if len(populations) != designs.shape[0]:
        raise ValueError(f"{len(populations)} populations for {designs.shape[0]} designs.")
    if designs.shape[0] == 0:
        return torch.empty(0, control["counts"].shape[1])
    with seeded(seed):
        arms = torch.cat([torch.zeros_like(designs[:1]), designs[:1]])  # the control arm needs a second arm beside it
        reference = simulate_label_means(program, guide, control, arms, n_samples=n_samples, estimator="analytic")
        rows = [
            simulate_label_means(program, guide, cells, design[None], n_samples=n_samples, estimator="analytic")
            for cells, design in zip(populations, designs, strict=True)
        ]
    return torch.cat([row[:, 0].mean(0, keepdim=True) for row in rows]) - reference[:, 0].mean(0)


__all__ = ["own_cell_shifts", "shrunk_depth_shifts"]
