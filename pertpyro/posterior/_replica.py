"""Calibration of the ATE intervals by a parametric bootstrap: refit the model on a screen simulated from itself.

The mean-field posterior of a variational fit is too narrow, and by how much depends on the screen (its size,
how strong and how many its effects are, how long training ran). A screen whose true shifts are known and which
looks like the user's one measures it: the *replica*. Its counts are drawn from the fitted model itself, for the
same cells (same perturbations, batches and sequencing depths), with one posterior draw of the global sites and
each cell's abducted basal state; its true shifts are that draw's shifts over the training control cells,
computed by the same engine as :meth:`~pertpyro.PerturbationModel.ate` (:mod:`pertpyro.causal._expected`).
A fresh model with the same settings, trained the same way on the replica, gives posterior draws of those shifts;
the variance model :class:`~pertpyro.posterior.IntervalCalibration` (``sd^2 = (scale sd)^2 + (relative mean)^2``)
fitted so that they cover the replica's truth at the nominal rates is then applied to the user's model.

This costs one more training per replica (two by default). It corrects the miscalibration the fitting procedure
has on screens like the user's; it cannot see misfit that the model family itself cannot produce (the replica is,
by construction, a screen the model describes exactly).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata import AnnData
from pyro import poutine

from pertpyro._settings import local_params, seeded
from pertpyro.causal._ate import label_shift_draws
from pertpyro.causal._counterfactual import abduct
from pertpyro.causal._population import subsample_rows
from pertpyro.data._loader import CellData, standalone_args
from pertpyro.data._registry import perturbation_labels
from pertpyro.module.sites import COUNTS, Z_BASAL
from pertpyro.posterior._intervals import IntervalCalibration, fit_interval_calibration, interval_coverage
from pertpyro.posterior._protocol import FittedModel

REPLICA_CHUNK = 4096
"""Cells simulated at a time (the replica's counts are built as a sparse matrix chunk by chunk)."""


@dataclass
class ReplicaCalibration:
    """Result of :func:`calibrate_by_replica`.

    Attributes
    ----------
    calibration
        The fitted variance model, to apply to the user's model.
    coverage
        Coverage of the replica's true shifts by the replica model's intervals, raw and recalibrated
        (columns ``level``, ``raw``, ``calibrated``); the recalibrated column is a fit, not a test.
    """

    calibration: IntervalCalibration
    coverage: pd.DataFrame


def simulate_replica(model: FittedModel, adata: AnnData, *, seed: int = 0) -> tuple[AnnData, dict[str, torch.Tensor]]:
    """Counts of ``adata``'s cells drawn from one posterior draw of ``model`` (a screen with known truth).

    Parameters
    ----------
    model
        A trained model.
    adata
        Cells to replicate: their perturbations, batches, depths (and artifact labels) are kept, their counts
        are replaced.
    seed
        Seed of the posterior draw and of the counts.

    Returns
    -------
    The replica (a copy of ``adata`` with new counts in ``X`` or the registered layer) and the latent values it
    was drawn from (global sites, and ``z_basal`` per cell of ``adata``).
    """
    artifacts = model.init_kwargs.get("artifacts")
    kwargs = {} if artifacts is None else {"artifact_key": model.init_kwargs["artifact_key"], "require_artifact": False}
    data = CellData(adata, model.registry, **kwargs)
    chunks, basal = [], []
    latents: dict[str, torch.Tensor] = {}
    with local_params(), seeded(seed), torch.no_grad():
        for start in range(0, len(data), REPLICA_CHUNK):
            rows = np.arange(start, min(start + REPLICA_CHUNK, len(data)))
            batch = data[rows]
            batch["idx"] = torch.arange(len(rows))
            draw = abduct(model.guide, batch)
            if not latents:  # one draw of the global sites for the whole replica
                latents = {k: v for k, v in draw.items() if k != Z_BASAL}
            given = {**latents, Z_BASAL: draw[Z_BASAL]}
            trace = poutine.trace(poutine.condition(model.program, data=given)).get_trace(
                None, *standalone_args(batch)[1:]
            )
            chunks.append(sp.csr_matrix(np.asarray(trace.nodes[COUNTS]["value"], dtype=np.float32)))
            basal.append(draw[Z_BASAL])
    replica = adata.copy()
    counts = sp.vstack(chunks, format="csr")
    if model.registry.layer is None:
        replica.X = counts
    else:
        replica.layers[model.registry.layer] = counts
    return replica, {**latents, Z_BASAL: torch.cat(basal)}


def replica_shifts(
    model: FittedModel,
    latents: dict[str, torch.Tensor],
    labels: Sequence[str],
    *,
    rows: np.ndarray,
    n_samples: int = 8,
    seed: int = 0,
) -> np.ndarray:
    """True shifts of a replica of the training data: the generating draw's ATE over the training cells ``rows``.

    The same engine as :meth:`~pertpyro.PerturbationModel.ate`, with every "posterior draw" the generating one
    (``n_samples`` repeats average the engine's remaining count noise). Returns ``(labels, G)``.
    """
    population = model.cell_data[rows]
    population["idx"] = torch.arange(len(rows))
    fixed = {k: (v[torch.as_tensor(rows)] if k == Z_BASAL else v) for k, v in latents.items()}
    generating = poutine.condition(model.guide, data=fixed)
    with local_params():
        draws = label_shift_draws(
            model.program, generating, population, labels, model.registry, n_samples=n_samples, seed=seed
        )
    return draws.mean(0).numpy()


def calibrate_by_replica(
    model: FittedModel,
    labels: Sequence[str],
    *,
    fit_replica: Callable[[AnnData, AnnData | None], FittedModel],
    validation_adata: AnnData | None = None,
    n_replicas: int = 2,
    n_samples: int = 100,
    max_cells: int | None = 2000,
    seed: int = 0,
) -> ReplicaCalibration:
    """Fit the interval calibration of ``model`` on replicas of its training screen (module docstring).

    Parameters
    ----------
    model
        A trained model.
    labels
        Perturbation labels whose shifts are scored (seen targets and combinations).
    fit_replica
        Builds and trains a fresh model with ``model``'s settings on a replica (and its replicated validation cells),
        the way ``model`` was trained: the miscalibration depends on the training settings.
    validation_adata
        The validation cells ``model`` was trained with, if any (replicated as well).
    n_replicas
        Replica screens (one training each); the calibration is fitted on all of them pooled. One replica's
        fit varies with its posterior draw; pooling steadies it.
    n_samples
        Posterior draws of each replica model's shifts.
    max_cells
        Control cells of the population, as in :meth:`~pertpyro.PerturbationModel.ate`.
    seed
        Seed of the replicas and of the draws.

    Returns
    -------
    The calibration and the pooled replicas' coverage table.
    """
    if n_replicas < 1:
        raise ValueError(f"n_replicas must be positive, got {n_replicas}.")
    labels_train = perturbation_labels(model.adata, model.registry)
    control = subsample_rows(np.flatnonzero(labels_train == model.registry.control), max_cells, seed)  # as in ate
    all_draws, all_truth = [], []
    for replica_index in range(n_replicas):
        replica_seed = seed + 1000 * replica_index
        replica, latents = simulate_replica(model, model.adata, seed=replica_seed)
        replica_val = None
        if validation_adata is not None:
            replica_val, _ = simulate_replica(model, validation_adata, seed=replica_seed + 1)
        all_truth.append(replica_shifts(model, latents, labels, rows=control, seed=replica_seed))
        refit = fit_replica(replica, replica_val)
        all_draws.append(refit.ate_draws(labels, n_samples=n_samples, max_cells=max_cells, seed=seed))
    draws, truth = np.concatenate(all_draws, axis=1), np.concatenate(all_truth, axis=0)
    calibration = fit_interval_calibration(draws, truth)
    raw = interval_coverage(draws, truth).set_index("level")["coverage"]
    fitted = interval_coverage(draws, truth, calibration=calibration).set_index("level")["coverage"]
    table = pd.DataFrame({"level": raw.index, "raw": raw.to_numpy(), "calibrated": fitted.to_numpy()})
    return ReplicaCalibration(calibration, table)
