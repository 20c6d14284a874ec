"""``PerturbationModel``: the user-facing class from a registered AnnData to effects with uncertainty."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from pertpyro._io import load_model, save_model
from pertpyro._settings import local_params, seeded, seeded_by_argument
from pertpyro._validate import check_query_args
from pertpyro.causal._ate import average_treatment_effect, label_shift_draws, log_normalise
from pertpyro.causal._counterfactual import INTERVENABLE_SITES, abduct, intervene
from pertpyro.causal._probability import check_query, exceedance_table
from pertpyro.data._blocks import holdout_rows
from pertpyro.data._loader import CellData, make_loader, program_args
from pertpyro.data._registry import Registry, design_matrix, get_registry, perturbation_labels
from pertpyro.data._stream import CountStatistics
from pertpyro.evaluation._calibration import IntervalCalibration
from pertpyro.evaluation._metrics import strong_perturbations
from pertpyro.inference._device import pin_memory_for
from pertpyro.inference._iwelbo import iwelbo_per_cell
from pertpyro.inference._lightning import SVIModule, fit
from pertpyro.inference._memory import kept_freed_memory
from pertpyro.inference._resume import TrainingInterrupted
from pertpyro.models._artifacts import (
    abduct_artifact,
    artifact_action,
    artifact_probability,
    check_artifact_mode,
    robust_library_init,
)
from pertpyro.models._grn_api import build_grn, grn_table, resolve_edge_do
from pertpyro.models._program import (
    EFFICACY_INIT_LOGIT,
    PerturbationGuide,
    PerturbationProgram,
    _inverse_softplus,
)

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "model.pt"  # pertpyro._io.TENSORS_FILE


def _gene_log_share(gene_totals: np.ndarray) -> torch.Tensor:
    totals = gene_totals + 0.5
    return torch.from_numpy(np.log(totals / totals.sum())).float()


def _library_moments(data: CellData, n_batches: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and sd of the log library size per batch (the starting point of the library model)."""
    log_lib = np.log(data.library)
    codes = data.batch_index
    locs, scales = [], []
    for b in range(max(n_batches, 1)):
        values = log_lib[codes == b] if np.any(codes == b) else log_lib
        locs.append(values.mean())
        scales.append(values.std() if len(values) > 1 else 0.5)
    return torch.tensor(locs), torch.tensor(scales)


def _initial_effects(stats: CountStatistics, response_rate: float) -> torch.Tensor:
    """Method-of-moments estimates of the effects: the start of the guide's effect means and of ``sigma_g``.

    Per target, the log ratio of each gene's expression share in its cells to that in control cells, inverted
    through the responder/escaper mixture with response rate ``response_rate``. ``stats`` are the count sums of
    :meth:`CellData.statistics`. Starting the effect means here rather than at zero matters: Adam moves a mean by
    about the learning rate per step, so strong effects (logit shifts of 2-3) started at zero are still short of
    their value when early stopping ends training, with a narrow posterior around the wrong value (on the
    simulator, 90% intervals covered 68% of the true shifts instead of 76-79% with this start;
    benchmarks/results/calibration.md).
    """
    gene_sums, control_sums = stats.target_gene_sums, stats.control_gene_sums  # (T, G), (G,)
    share = (gene_sums + 0.5) / (gene_sums + 0.5).sum(1, keepdims=True)
    control_share = (control_sums + 0.5) / (control_sums + 0.5).sum()
    ratio = share / control_share
    responder_ratio = np.maximum(ratio - (1 - response_rate), 0.05) / response_rate
    return torch.from_numpy(np.clip(np.log(responder_ratio), -4.0, 4.0)).float()


STRONG_SIGNAL_TO_NOISE = 3.0  # efficacy="strong": targets whose own label's shift is this far above sampling noise


def _resolve_efficacy(efficacy: bool | str | Sequence[str], adata: AnnData, registry: Registry) -> bool | list[str]:
    """``efficacy`` as stored: a bool, or the list of targets with escapers (``"strong"`` resolved on ``adata``)."""
    if isinstance(efficacy, bool):
        return efficacy
    if isinstance(efficacy, str):
        if efficacy != "strong":
            raise ValueError(f"efficacy must be True, False, 'strong' or a list of targets, got {efficacy!r}.")
        strong = set(strong_perturbations(adata, threshold=STRONG_SIGNAL_TO_NOISE))
        return [t for t in registry.targets if t in strong]  # single-target labels with a clear shift
    return [str(t) for t in efficacy]


def _efficacy_targets(efficacy: bool | Sequence[str], targets: Sequence[str]) -> torch.Tensor | None:
    """Boolean ``(T,)`` of the targets with escapers when ``efficacy`` lists them; ``None`` for a bool."""
    if isinstance(efficacy, bool):
        return None
    listed = set(efficacy)
    unknown = sorted(listed - set(targets))
    if unknown:
        raise ValueError(f"efficacy lists targets absent from the data: {unknown}.")
    return torch.tensor([t in listed for t in targets])


def _subset_batch(data: CellData, rows: np.ndarray) -> dict[str, torch.Tensor]:
    batch = data[rows]
    batch["idx"] = torch.arange(len(rows))
    return batch


class PerturbationModel:
    """Bayesian model of a CRISPR perturbation screen (SAMS-VAE family, with knockout efficacy).

    Each cell's counts are a negative binomial around ``library * softmax(decoder(z_basal) + shift)``, where the
    shift is the sum of sparse per-target effects on the gene logits, applied only if the knockout took in that
    cell (``efficacy``). See :mod:`pertpyro.models._program` for the generative story and site names.

    Parameters
    ----------
    adata
        AnnData registered with :func:`pertpyro.setup_anndata` (raw counts); the training cells.
    latent_dim
        Dimension of the basal latent state.
    n_hidden
        Hidden width of the encoder and decoder (decoder: 0 = linear).
    sparse_effects
        Spike-and-slab ``effect_mask`` on the effects. Off by default: on the Papalexi screen the per-gene
        Normal prior alone predicted held-out effects better (README, "Results").
    efficacy
        Per-cell ``efficacy`` latent (cells that escaped the knockout): ``True`` for every target, a list of the
        targets that may have escapers (the others' cells all respond), or ``"strong"``: the targets whose own
        label's observed shift in ``adata`` has a signal-to-noise ratio of at least 3
        (:func:`pertpyro.evaluation.strong_perturbations`; resolved once, here, on the training data, and stored as
        the list). On Papalexi the mixture for knockouts with weak effects soaks up basal heterogeneity shared by
        all labels (their responder effects point to the interferon program) and lowers held-out Pearson;
        configs/papalexi.yaml uses ``"strong"``, which keeps it for the six knockouts with a clear shift
        (benchmarks/results/papalexi.md).
    mask_prior
        Initial prior inclusion probability of an effect.
    encode_perturbation
        Whether the basal-state encoder sees each cell's targets (helps it leave the effects to ``effect``).
    effect_df
        Degrees of freedom of the Student-t prior on the effects (0: Normal prior). The default 4 has heavy tails:
        a target's rare strong effect on a gene is not shrunk toward the per-gene scale of the many null effects,
        while weak effects still are (on the simulator it brought the calibrated 90% intervals into 85-95% on
        all four benchmark screens; benchmarks/results/calibration.md).
    artifacts
        Technical-artifact block (:mod:`pertpyro.models._artifacts`): ``None`` (off); ``"observed"``: the boolean
        labels ``obs[artifact_key]`` (e.g. from :func:`pertpyro.pp.qc`) are the ``artifact`` site's values;
        ``"latent"``: they are noisy evidence and each cell's artifact state is inferred (labels optional). With the
        block on, the data may hold only control cells (the model is then a doublet / low-quality-cell detector).
    artifact_key
        ``obs`` column of the artifact labels (read, never written).
    seed
        Seed of the parameter initialisation.
    grn
        Replace the free per-target effects by knockouts propagated through a sparse regulator -> gene network
        (sites ``adjacency``, ``adjacency_weight``; :mod:`pertpyro.models._grn`, which documents the memory and
        time scaling with the number of regulators). Regulators are the targets, then ``grn_regulators``.
    grn_prior
        Prior network ``DataFrame(source, target[, weight])``, e.g. :func:`pertpyro.datasets.collectri` (or the
        string ``"collectri"``, or a CSV path, for configs): its edges get prior inclusion ``grn_prior_inclusion``;
        ``None``: every edge has ``grn_density``. A ``weight`` (sign) column is accepted but not used yet.
    grn_regulators
        Measured genes added as regulators (never perturbed in training: their knockouts can still be predicted,
        from their edges learnt through their parents' knockouts).
    grn_steps
        Propagation steps of a knockout (1: direct edges only).
    grn_density
        Prior inclusion probability of an edge.
    grn_prior_inclusion
        Prior inclusion probability of an edge listed in ``grn_prior``.
    grn_weight_scale
        Prior sd of the edge weights (logit change of a gene per unit of regulator activity).
    """

    def __init__(
        self,
        adata: AnnData,
        *,
        latent_dim: int = 10,
        n_hidden: int = 128,
        sparse_effects: bool = False,
        efficacy: bool | str | Sequence[str] = True,
        mask_prior: float = 0.5,
        encode_perturbation: bool = True,
        effect_df: float = 4.0,
        artifacts: str | None = None,
        artifact_key: str = "artifact",
        seed: int = 0,
        grn: bool = False,
        grn_prior: pd.DataFrame | str | None = None,
        grn_regulators: Sequence[str] | None = None,
        grn_steps: int = 3,
        grn_density: float = 0.05,
        grn_prior_inclusion: float = 0.5,
        grn_weight_scale: float = 1.0,
    ) -> None:
        self.registry = get_registry(adata)
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be positive, got {latent_dim}.")
        check_artifact_mode(artifacts)
        if self.registry.n_targets == 0 and artifacts is None:
            raise ValueError(
                "The registered data have no perturbation targets (every cell is a control); only the artifact "
                "model (artifacts='observed' or 'latent') runs on such data."
            )
        labels = perturbation_labels(adata, self.registry)
        if not np.any(labels == self.registry.control):
            raise ValueError(f"The training data have no control cells labelled {self.registry.control!r}.")
        self.adata = adata
        self.init_kwargs: dict[str, Any] = {
            "latent_dim": latent_dim,
            "n_hidden": n_hidden,
            "sparse_effects": sparse_effects,
            "efficacy": _resolve_efficacy(efficacy, adata, self.registry),
            "mask_prior": mask_prior,
            "encode_perturbation": encode_perturbation,
            "effect_df": effect_df,
            "artifacts": artifacts,
            "artifact_key": artifact_key,
            "seed": seed,
        }
        if grn:  # only stored when on, so that saved models without the block keep their settings
            self.init_kwargs.update(
                grn=True,
                grn_prior=grn_prior,
                grn_regulators=None if grn_regulators is None else list(grn_regulators),
                grn_steps=grn_steps,
                grn_density=grn_density,
                grn_prior_inclusion=grn_prior_inclusion,
                grn_weight_scale=grn_weight_scale,
            )
        data = CellData(adata, self.registry, **self._artifact_data_kwargs(adata, required=artifacts == "observed"))
        self._data = data
        n_batches = self.registry.n_batches
        # PyroModules built in local mode keep their parameters to themselves; seeded: globals restored after
        with seeded(seed), local_params():
            self._build(data, adata, n_batches)
        self.history_: pd.DataFrame | None = None
        self.is_trained = False
        self.train_settings_: dict[str, Any] = {}
        self._validation_adata: AnnData | None = None
        self.interval_calibration_: IntervalCalibration | None = None

    def _build(self, data: CellData, adata: AnnData, n_batches: int) -> None:
        kw = self.init_kwargs
        stats = data.statistics()  # one chunked pass when the counts are on disk
        grn_block, self.regulators = (None, None)
        if kw.get("grn", False):  # 0.731: the response rate the efficacy logits start at (sigmoid(1))
            grn_block, self.regulators = build_grn(self.registry, data, _initial_effects(stats, 0.731), kw)
        self.program = PerturbationProgram(
            self.registry.n_genes,
            self.registry.n_targets,
            n_batches,
            kw["latent_dim"],
            n_hidden=kw["n_hidden"],
            target_frequency=torch.from_numpy(data.target_frequency()),
            gene_bias=_gene_log_share(stats.gene_totals),
            sparse_effects=kw["sparse_effects"],
            efficacy=kw["efficacy"] is not False,
            efficacy_targets=_efficacy_targets(kw["efficacy"], self.registry.targets),
            mask_prior=kw["mask_prior"],
            effect_df=kw["effect_df"],
            library_init=_library_moments(data, n_batches),
            grn=grn_block,
            artifacts=kw["artifacts"],
        )
        if kw["artifacts"] is not None:
            robust_library_init(self.program, np.log(data.library), data.batch_index)
        effects = _initial_effects(stats, float(torch.sigmoid(torch.tensor(EFFICACY_INIT_LOGIT))))
        with torch.no_grad():  # sigma_g starts at the root-mean-square of the moment estimates across targets
            if effects.shape[0] > 0:  # (no targets: an all-control data set for the artifact model)
                self.program.effect_prior_raw_scale.copy_(
                    _inverse_softplus(effects.pow(2).mean(0).sqrt().clamp(0.05, 2.0))
                )
        self.guide = PerturbationGuide(
            self.program, n_batches, n_hidden=kw["n_hidden"], encode_perturbation=kw["encode_perturbation"]
        )
        if effects.shape[0] > 0 and grn_block is None:  # the effects start at their moment estimates, too
            with torch.no_grad():
                self.guide.effect_loc.copy_(effects)

    # ------------------------------------------------------------------ training
    @seeded_by_argument  # the global random states come back after training
    @kept_freed_memory()  # the allocator tuning only while training
    def train(
        self,
        *,
        max_epochs: int | None = None,
        batch_size: int = 512,
        lr: float = 5e-3,
        validation_adata: AnnData | None = None,
        validation_fraction: float = 0.1,
        accelerator: str = "auto",
        devices: int | str = "auto",
        strategy: str = "auto",
        early_stopping: bool = True,
        patience: int = 20,
        seed: int = 0,
        log_dir: str | Path | None = None,
        progress_bar: bool = True,
        block_size: int = 1,
        checkpoint_dir: str | Path | None = None,
        ckpt_path: str | Path | None = None,
    ) -> pd.DataFrame:
        """Fit model and guide by stochastic variational inference (Lightning underneath).

        Parameters
        ----------
        max_epochs
            Passes over the training cells; ``None`` picks ``min(400, max(50, 2e6 // n_cells))``.
        batch_size
            Cells per minibatch.
        lr
            Adam learning rate.
        validation_adata
            Held-out cells for the validation ELBO and early stopping; ``None`` holds out
            ``validation_fraction`` of the training cells at random.
        validation_fraction
            Fraction held out when ``validation_adata`` is ``None``.
        accelerator, devices, strategy
            Passed to ``lightning.Trainer`` (``accelerator="gpu"`` trains on a GPU).
        early_stopping
            Stop when the validation ELBO stalls for ``patience`` epochs.
        patience
            Epochs without improvement before stopping.
        seed
            Seed of minibatch order and of every Monte-Carlo draw (results are reproducible on CPU).
        log_dir
            Folder for the CSV log of the losses.
        progress_bar
            Show a progress bar.
        block_size
            For a backed (on-disk) AnnData: minibatches made of shuffled blocks of ``block_size`` consecutive cells
            (and the validation hold-out of whole blocks), read from disk in one piece each; 1 (default) draws cells
            fully at random. Not with several processes.
        checkpoint_dir
            Write Lightning checkpoints here: ``last.ckpt`` every epoch, ``best.ckpt`` at the best validation loss.
        ckpt_path
            Continue a killed fit from this checkpoint (call on a model built with the same settings and data, with
            the same ``train`` arguments): it ends with the parameters an uninterrupted fit would have.

        Returns
        -------
        The loss history (also in ``history_``): negative ELBO per cell, train and validation.

        Notes
        -----
        On Linux, while training, glibc's allocator is tuned so that the step's large temporaries are reused instead
        of mapped afresh (:func:`pertpyro.inference.kept_freed_memory`; opt out with
        ``PERTPYRO_KEEP_FREED_MEMORY=0``). Python's, NumPy's and torch's global random states are the same after
        training as before (the fit draws from ``seed``).
        """
        self.train_settings_ = {
            "max_epochs": max_epochs,
            "batch_size": batch_size,
            "lr": lr,
            "validation_fraction": validation_fraction,
            "early_stopping": early_stopping,
            "patience": patience,
            "seed": seed,
            "progress_bar": progress_bar,
        }
        self._validation_adata = validation_adata
        n = len(self._data)
        if validation_adata is None:
            train_rows, val_rows = holdout_rows(n, validation_fraction, seed, block_size)
            train_data, val_data = _RowSubset(self._data, train_rows), _RowSubset(self._data, val_rows)
        else:
            train_data = self._data
            val_data = CellData(validation_adata, self.registry, **self._artifact_data_kwargs(validation_adata))
        if max_epochs is None:
            max_epochs = int(min(400, max(50, 2_000_000 // len(train_data))))
        module = SVIModule(self.program, self.guide, n_train=len(train_data), n_val=len(val_data), lr=lr, seed=seed)
        pin = pin_memory_for(accelerator)  # page-locked batches, copied asynchronously, only for a CUDA GPU
        train_loader = make_loader(
            train_data, batch_size=batch_size, shuffle=True, seed=seed, pin_memory=pin, block_size=block_size
        )
        val_loader = make_loader(val_data, batch_size=max(batch_size, 2048), shuffle=False, pin_memory=pin)
        logger.info(
            "Training on %d cells, validating on %d, for at most %d epochs.", len(train_data), len(val_data), max_epochs
        )
        try:
            history = fit(
                module,
                train_loader,
                val_loader,
                max_epochs=max_epochs,
                accelerator=accelerator,
                devices=devices,
                strategy=strategy,
                early_stopping=early_stopping,
                patience=patience,
                log_dir=log_dir,
                progress_bar=progress_bar,
                checkpoint_dir=checkpoint_dir,
                ckpt_path=ckpt_path,
            )
        except TrainingInterrupted as stop:  # Ctrl-C: keep what was trained, then let the interrupt through
            self._record_history(stop.history)
            raise
        self._record_history(history)
        return history

    def _record_history(self, history: pd.DataFrame | None) -> None:
        if history is not None:
            self.history_ = history if self.history_ is None else pd.concat([self.history_, history], ignore_index=True)
            self.is_trained = True

    # ------------------------------------------------------------------ queries
    def _population_rows(self, cells: AnnData | None, max_cells: int | None, seed: int) -> np.ndarray:
        """Rows of the query population: the training control cells (``cells=None``) or ``cells``, subsampled."""
        if cells is None:
            rows = np.flatnonzero(perturbation_labels(self.adata, self.registry) == self.registry.control)
        else:
            rows = np.arange(cells.n_obs)
        if max_cells is not None and len(rows) > max_cells:
            rows = np.sort(np.random.default_rng(seed).choice(rows, size=max_cells, replace=False))
        return rows

    def _population(self, cells: AnnData | None, max_cells: int | None, seed: int) -> dict[str, torch.Tensor]:
        data = self._data if cells is None else CellData(cells, self.registry)
        return _subset_batch(data, self._population_rows(cells, max_cells, seed))

    def _check_trained(self) -> None:
        if not self.is_trained:
            raise RuntimeError("The model is not trained yet: call model.train() first.")

    def ate(
        self,
        perturbations: Sequence[str] | str | None = None,
        *,
        n_samples: int = 100,
        ci: float = 0.9,
        responders: bool = False,
        cells: AnnData | None = None,
        max_cells: int | None = 2000,
        match_batches: bool = False,
        seed: int = 0,
        do: Mapping[str, Any] | None = None,
        calibrated: bool = True,
    ) -> pd.DataFrame:
        """Average treatment effect of perturbations against control, with credible intervals.

        The effect is the shift of mean ``log1p(1e4 x / sum x)``, predicted by simulating counts at the
        population's depth under ``poutine.do(perturbation=...)``, over the basal states of the population cells.

        Parameters
        ----------
        perturbations
            Labels: single targets or combinations (``"A+B"``) of seen targets; ``None`` = every seen target.
        n_samples
            Posterior draws.
        ci
            Mass of the equal-tailed credible interval.
        responders
            Effect among cells where the knockout took (``do(efficacy=1)``); default intent-to-treat, what a
            screen observes.
        cells
            Population whose basal states are used (default: the training data's control cells).
        max_cells
            Subsample the population to at most this many cells (``None``: all).
        match_batches
            Weight the population in each label's arm to the batch composition of that label's training cells
            (labels never observed keep the population's composition). The result is then the shift a screen
            observes between the label's cells and controls, including differences in their batch make-up;
            by default the batch-standardised effect (both arms at the population's composition).
        seed
            Seed of the Monte-Carlo draws.
        do
            Extra intervention on the network in both arms (``grn=True``):
            ``{"adjacency": {("STAT1", "IRF1"): 0}}`` removes that edge (1 forces it in; other edges keep their
            posterior draws). The ATE is then the knockout's effect in a world without the edge.
        calibrated
            Once :meth:`calibrate` has run, widen the intervals by its calibration (``mean +- z sd'``, see
            :class:`~pertpyro.evaluation.IntervalCalibration`); ``False``: the raw equal-tailed posterior
            quantiles. Without a calibration the intervals are the raw quantiles either way.

        Returns
        -------
        Tidy DataFrame with columns ``perturbation``, ``gene``, ``mean``, ``lower``, ``upper``.
        """
        check_query_args(n_samples=n_samples, ci=ci, max_cells=max_cells, seed=seed)
        self._check_trained()
        if perturbations is None:
            perturbations = list(self.registry.targets)
        elif isinstance(perturbations, str):
            perturbations = [perturbations]
        population = self._population(cells, max_cells, seed)
        weights = self._batch_weights(perturbations, population) if match_batches else None
        return average_treatment_effect(
            self.program,
            self.guide,
            population,
            perturbations,
            self.registry,
            n_samples=n_samples,
            ci=ci,
            responders=responders,
            weights=weights,
            seed=seed,
            global_action=self._edge_action(do),
            calibration=self.interval_calibration_ if calibrated else None,
        )

    def calibrate(
        self,
        perturbations: Sequence[str] | str | None = None,
        *,
        n_replicas: int = 2,
        n_samples: int = 100,
        max_cells: int | None = 2000,
        seed: int = 0,
        **train_kwargs: Any,
    ) -> pd.DataFrame:
        """Calibrate the ATE intervals on a replica screen simulated from this model (a parametric bootstrap).

        The mean-field posterior is too narrow. A replica of the training screen is drawn from the fitted model
        (same cells, perturbations and depths; one posterior draw of the effects, so its true shifts are known),
        a fresh model with the same settings is trained on it the way this one was, and the variance model
        ``sd' = sqrt((scale sd)^2 + (relative mean)^2)`` that makes its intervals cover the replica's truth at
        the nominal rates is kept: :meth:`ate` and :meth:`ate_probability` use it from then on (and
        :meth:`save` stores it). Costs one more training per replica. See :mod:`pertpyro.posterior._replica`.

        Parameters
        ----------
        perturbations
            Labels whose shifts are scored (default: every seen target and combination of the training data).
        n_replicas
            Replica screens, pooled (each costs one training; one replica's calibration is noisier).
        n_samples
            Posterior draws of the replica model's shifts.
        max_cells
            Control cells of the population, as in :meth:`ate`.
        seed
            Seed of the replica and of the draws.
        **train_kwargs
            Overrides of the training settings (default: those of the last :meth:`train` call).

        Returns
        -------
        Coverage of the replica's true shifts by the replica model's intervals, per level: ``raw`` and
        ``calibrated`` (the latter is the fit, not a test); ``scale`` and ``relative`` are in
        ``interval_calibration_``.
        """
        check_query_args(n_replicas=n_replicas, n_samples=n_samples, max_cells=max_cells, seed=seed)
        from pertpyro.posterior._replica import calibrate_by_replica

        self._check_trained()
        if perturbations is None:
            observed = set(perturbation_labels(self.adata, self.registry)) - {self.registry.control}
            perturbations = sorted(observed)
        labels = self._labels(perturbations)
        settings = {**self.train_settings_, **train_kwargs}
        result = calibrate_by_replica(
            self,
            labels,
            train_kwargs=settings,
            validation_adata=self._validation_adata,
            n_replicas=n_replicas,
            n_samples=n_samples,
            max_cells=max_cells,
            seed=seed,
        )
        self.interval_calibration_ = result.calibration
        logger.info(
            "Interval calibration: scale %.2f, relative %.2f.", result.calibration.scale, result.calibration.relative
        )
        return result.coverage

    def _edge_action(self, do: Mapping[str, Any] | None) -> Any:
        if not do:
            return None
        unknown = sorted(set(do) - {"adjacency"})
        if unknown:
            raise ValueError(f"ate(do=...) accepts only 'adjacency' (edge interventions), got {unknown}.")
        return resolve_edge_do(self, do["adjacency"])

    def grn(self, threshold: float | None = None, *, ci: float = 0.9, write_varp: bool = False) -> pd.DataFrame:
        """The inferred regulatory network as a tidy edge table (``grn=True``).

        Parameters
        ----------
        threshold
            Keep edges with posterior inclusion probability at least this (``None``: every regulator -> gene pair).
        ci
            Mass of the credible interval of the weight (under the guide's Normal).
        write_varp
            Also write the ``(genes x genes)`` posterior inclusion matrix to ``adata.varp["pertpyro_grn"]`` (row:
            source, column: target; regulators that are not measured genes are left out). Needs at least one
            regulator that is a measured gene.

        Returns
        -------
        DataFrame ``source, target, prob, weight, ci_lower, ci_upper`` sorted by ``prob`` (descending). ``weight``
        is the posterior mean of the logit change of ``target`` per unit of ``source`` activity given the edge
        (a knockout removes one unit: negative weight = the knockout raises the target).
        """
        return grn_table(self, threshold, ci=ci, write_varp=write_varp)

    def ate_draws(
        self,
        perturbations: Sequence[str] | str | None = None,
        *,
        n_samples: int = 100,
        responders: bool = False,
        cells: AnnData | None = None,
        max_cells: int | None = 2000,
        match_batches: bool = False,
        seed: int = 0,
    ) -> np.ndarray:
        """Posterior draws of the shifts behind :meth:`ate`, ``(n_samples, labels, genes)`` (same arguments)."""
        check_query_args(n_samples=n_samples, max_cells=max_cells, seed=seed)
        self._check_trained()
        labels = self._labels(perturbations)
        population = self._population(cells, max_cells, seed)
        weights = self._batch_weights(labels, population) if match_batches else None
        return label_shift_draws(
            self.program,
            self.guide,
            population,
            labels,
            self.registry,
            n_samples=n_samples,
            responders=responders,
            weights=weights,
            seed=seed,
        ).numpy()

    def ate_probability(
        self,
        perturbations: Sequence[str] | str | None = None,
        *,
        threshold: float = 0.1,
        n_samples: int = 100,
        fdr: float | None = None,
        calibration: IntervalCalibration | bool | None = None,
        **kwargs: Any,
    ) -> pd.DataFrame:
        """Posterior probability that ``|ATE| > threshold`` per perturbation and gene, with optional hit calls.

        Parameters
        ----------
        perturbations
            Labels, as in :meth:`ate`.
        threshold
            Smallest absolute shift of mean ``log1p(1e4 x / sum x)`` that counts as an effect.
        n_samples
            Posterior draws.
        fdr
            Call hits at this Bayesian false discovery rate (e.g. 0.05) over every label and gene of the table:
            columns ``hit`` and ``lfdr_set`` (see :func:`pertpyro.causal.bayesian_fdr_calls`).
        calibration
            A recalibration of the posterior (:func:`pertpyro.evaluation.fit_interval_calibration`): probabilities
            from its widened Normal instead of the raw draws. ``None`` (default): the one :meth:`calibrate`
            fitted, if any; ``False``: the raw draws.
        **kwargs
            ``responders``, ``cells``, ``max_cells``, ``match_batches``, ``seed`` as in :meth:`ate`.

        Returns
        -------
        Tidy DataFrame with columns ``perturbation``, ``gene``, ``mean``, ``probability`` (``hit``, ``lfdr_set``).
        """
        check_query(threshold, fdr)  # before the draws
        labels = self._labels(perturbations)
        draws = self.ate_draws(labels, n_samples=n_samples, **kwargs)
        if calibration is None:
            calibration = self.interval_calibration_
        elif calibration is False:
            calibration = None
        return exceedance_table(
            draws, labels, self.registry.genes, threshold=threshold, fdr=fdr, calibration=calibration
        )

    def to_inference_data(self, num_samples: int = 200, **kwargs: Any) -> Any:
        """Posterior of the global sites (and optionally a posterior predictive check) as ``arviz.InferenceData``.

        See :func:`pertpyro.posterior.to_inference_data` for the arguments (``heldout``, ``seed``, ...).
        """
        from pertpyro.posterior import to_inference_data

        self._check_trained()
        return to_inference_data(self, num_samples=num_samples, **kwargs)

    def _labels(self, perturbations: Sequence[str] | str | None) -> list[str]:
        if perturbations is None:
            return list(self.registry.targets)
        if isinstance(perturbations, str):
            return [perturbations]
        return [str(p) for p in perturbations]

    def counterfactual(
        self,
        cells: AnnData,
        *,
        do: Mapping[str, str | float],
        n_samples: int = 20,
        batch_size: int = 2048,
        seed: int = 0,
    ) -> AnnData:
        """Counterfactual expression of observed cells under an intervention, through ``pyro.poutine.do``.

        Abduction: each cell's basal state is drawn from the guide given its observed counts. Action: ``do`` sets
        ``perturbation`` (a label, e.g. ``"control"`` or ``"STAT1+IRF1"``), ``efficacy`` (0 or 1) and/or ``artifact``
        (0: the cleaned cell; needs the artifact block) for every cell. With the artifact block, each cell's factual
        artifact state is abducted too (its label in the observed mode, a posterior draw in the latent mode), and
        under ``do(artifact=...)`` its depth is moved to the intervened state (the depth noise is kept).
        Prediction: the model simulates counts at each cell's own depth (moved by the intervened targets'
        library effect). Repeated over ``n_samples`` posterior draws. For cells that were themselves perturbed,
        the removal of their factual library effect uses the same ``efficacy`` draw as the counterfactual world (their
        factual efficacy is not abducted separately yet); for control cells the query is exact.

        Parameters
        ----------
        cells
            Observed cells with the registered genes (and the registry's obs columns).
        do
            Intervention by site name: ``{"perturbation": label}``, ``{"efficacy": 1}``, with ``artifacts``
            ``{"artifact": 0}``, with ``grn=True`` ``{"adjacency": {(source, target): 0 or 1}}`` (edges removed
            or forced; the others keep their draws), or several.
        n_samples
            Posterior draws averaged.
        batch_size
            Cells per chunk.
        seed
            Seed of the draws.

        Returns
        -------
        AnnData (same cells and genes, ``obs`` copied) with ``X`` the posterior mean of ``log1p(1e4 x / sum x)``,
        ``layers["counts"]`` the posterior mean of the counts, ``uns["pertpyro_do"]`` the intervention.
        """
        check_query_args(n_samples=n_samples, batch_size=batch_size, seed=seed)
        self._check_trained()
        if not do:
            raise ValueError("Give at least one intervention, e.g. do={'perturbation': 'control'}.")
        absent = {"artifact"} if self.program.artifact_block is None else set()
        absent |= {"adjacency"} if self.program.grn is None else set()
        sites = tuple(s for s in INTERVENABLE_SITES if s not in absent)
        unknown = sorted(set(do) - set(sites))
        if unknown:
            raise ValueError(f"Cannot intervene on {unknown}: this model's intervenable sites are {sites}.")
        data = CellData(cells, self.registry, **self._artifact_data_kwargs(cells, required=False))
        edge_action = self._edge_action({"adjacency": do["adjacency"]}) if "adjacency" in do else None
        action_values: dict[str, torch.Tensor] = {}
        if "perturbation" in do:
            action_values["perturbation"] = torch.from_numpy(design_matrix([str(do["perturbation"])], self.registry)[0])
        if "efficacy" in do:
            if do["efficacy"] not in (0, 1):
                raise ValueError(f"efficacy can be set to 0 or 1, got {do['efficacy']!r}.")
            action_values["efficacy"] = torch.tensor(float(do["efficacy"]))
        if "artifact" in do:
            action_values["artifact"] = artifact_action(self.program, do["artifact"])
        lognorm = np.zeros((len(data), self.registry.n_genes), dtype=np.float32)
        counts = np.zeros_like(lognorm)
        with seeded(seed), local_params(), torch.no_grad():
            for start in range(0, len(data), batch_size):
                rows = np.arange(start, min(start + batch_size, len(data)))
                batch = _subset_batch(data, rows)
                n = len(rows)
                action = {k: (v.expand(n, -1) if v.ndim else v.expand(n)) for k, v in action_values.items()}
                for _ in range(n_samples):
                    latents, world = abduct(self.guide, batch), batch
                    if self.program.artifact_block is not None:  # keep each cell's factual artifact state
                        latents, world = abduct_artifact(self.program, self.guide, batch, latents, action)
                    extra = {} if edge_action is None else edge_action(latents)
                    x = intervene(self.program, latents, world, {**action, **extra})
                    counts[rows] += x.numpy() / n_samples
                    lognorm[rows] += log_normalise(x).numpy() / n_samples
        out = AnnData(lognorm, obs=cells.obs.copy(), var=pd.DataFrame(index=list(self.registry.genes)))
        out.layers["counts"] = counts
        out.uns["pertpyro_do"] = {k: str(v) for k, v in do.items()}
        return out

    def _batch_weights(self, labels: Sequence[str], population: dict[str, torch.Tensor]) -> np.ndarray:
        """Per-label weights of population cells matching each label's training batch composition."""
        codes = population["batch_index"].numpy()
        n_batches = max(self.registry.n_batches, 1)
        base = np.bincount(codes, minlength=n_batches) / len(codes)
        train_labels = perturbation_labels(self.adata, self.registry)
        out = np.ones((len(labels), len(codes)))
        for i, label in enumerate(labels):
            rows = train_labels == label
            if rows.any():
                share = np.bincount(self._data.batch_index[rows], minlength=n_batches) / rows.sum()
                out[i] = share[codes] / np.maximum(base[codes], 1e-12)
        return out

    def predict_shift(self, labels: Sequence[str], *, n_samples: int = 30, seed: int = 0) -> pd.DataFrame:
        """Posterior-mean observed shift per label, ``labels x genes`` (what :mod:`pertpyro.evaluate` reads).

        The shift a held-out sample of the label's cells will show against control cells: the ATE with each arm
        at its own batch composition (``ate(..., match_batches=True)``).
        """
        table = self.ate(list(labels), n_samples=n_samples, seed=seed, match_batches=True)
        wide = table.pivot(index="perturbation", columns="gene", values="mean")
        return wide.loc[list(labels), list(self.registry.genes)]

    def iwelbo(self, adata: AnnData, *, n_particles: int = 20, batch_size: int = 1024, seed: int = 0) -> float:
        """Mean importance-weighted ELBO (nats per cell) of the cells of ``adata``, e.g. held-out test cells.

        A bound on ``log p(counts, library)``: discrete per-cell states are summed exactly, the artifact states
        included (with the block). Artifact labels are not scored, so models with and without the block compare.
        """
        check_query_args(n_particles=n_particles, batch_size=batch_size, seed=seed)
        self._check_trained()
        data = CellData(adata, self.registry)
        values = []
        with seeded(seed):
            for start in range(0, len(data), batch_size):
                rows = np.arange(start, min(start + batch_size, len(data)))
                values.append(
                    iwelbo_per_cell(self.program, self.guide, _subset_batch(data, rows), n_particles=n_particles)
                )
        return float(torch.cat(values).mean())

    @torch.no_grad()
    def get_latent_representation(self, adata: AnnData | None = None, *, batch_size: int = 4096) -> np.ndarray:
        """Posterior mean of ``z_basal`` per cell, ``(n_cells, latent_dim)``; write it to ``obsm`` yourself."""
        data = self._data if adata is None else CellData(adata, self.registry)
        out = []
        for batch in make_loader(data, batch_size=batch_size, shuffle=False):
            loc, _ = self.guide.encoder(batch["counts"], batch["batch_index"], batch["perturbation"])
            out.append(loc)
        return torch.cat(out).numpy()

    def effect_inclusion(self) -> pd.DataFrame:
        """Posterior probability that each target affects each gene (``targets x genes``)."""
        if not self.program.sparse_effects:
            raise ValueError("This model has no effect mask (sparse_effects=False).")
        probs = torch.sigmoid(self.guide.mask_logit.detach()).numpy()
        return pd.DataFrame(probs, index=list(self.registry.targets), columns=list(self.registry.genes))

    def artifact_probability(
        self,
        adata: AnnData | None = None,
        *,
        n_draws: int = 30,
        batch_size: int = 2048,
        write: bool = False,
        seed: int = 0,
    ) -> pd.Series:
        """Posterior probability that each cell is a technical artifact, ``P(artifact = 1 | x, depth, label)``.

        Exact in the artifact state; the basal state is integrated by importance sampling with ``n_draws`` guide
        draws (:func:`pertpyro.models._artifacts.artifact_posterior`). The labels in ``obs[artifact_key]`` enter as
        evidence in the latent mode when present; in the observed mode they are ignored (the probability is then
        the model's own call from counts and depth).

        Parameters
        ----------
        adata
            Cells to score (default: the training data).
        n_draws
            Importance samples of the basal state.
        batch_size
            Cells per chunk.
        write
            Also write the probabilities to ``adata.obs["pertpyro_artifact_prob"]`` (the only entry written).
        seed
            Seed of the draws.

        Returns
        -------
        Series indexed by ``obs_names``.
        """
        check_query_args(n_draws=n_draws, batch_size=batch_size, seed=seed)
        self._check_trained()
        target = self.adata if adata is None else adata
        return artifact_probability(self, target, n_draws=n_draws, batch_size=batch_size, write=write, seed=seed)

    def _artifact_data_kwargs(self, adata: AnnData, *, required: bool = False) -> dict[str, Any]:
        """``CellData`` options reading the artifact labels (none when the block is off)."""
        if self.init_kwargs["artifacts"] is None:
            return {}
        return {"artifact_key": self.init_kwargs["artifact_key"], "require_artifact": required}

    def efficacy_probability(self) -> pd.Series:
        """Estimated fraction of cells per target in which the knockout took effect (posterior median)."""
        rho = self.guide.efficacy_median().detach().numpy()
        if self.program.efficacy_targets is not None:  # targets without escapers respond in every cell
            rho = np.where(self.program.efficacy_targets.numpy(), rho, 1.0)
        return pd.Series(rho, index=list(self.registry.targets), name="efficacy")

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write parameters (``model.pt``, tensors only) and settings, registry, history (``settings.json``) to ``path``.

        Each file is written atomically (a crash leaves the old file or none).
        """
        return save_model(self, path, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | Path, adata: AnnData) -> PerturbationModel:
        """Rebuild a saved model on ``adata`` (the training data, or data with the same genes and targets).

        No code from the files runs (``torch.load(weights_only=True)``); a damaged or truncated file raises
        :class:`pertpyro._io.ModelFileError` (a ``ValueError``) naming it.
        """
        return load_model(cls, path, adata)

    def __repr__(self) -> str:
        r = self.registry
        status = "trained" if self.is_trained else "untrained"
        return (
            f"PerturbationModel({self.adata.n_obs} cells x {r.n_genes} genes, {r.n_targets} targets, "
            f"latent_dim={self.init_kwargs['latent_dim']}, {status})"
        )


class _RowSubset(torch.utils.data.Dataset):
    """A view of some rows of a :class:`CellData` (the random validation hold-out)."""

    def __init__(self, data: CellData, rows: np.ndarray) -> None:
        self.data, self.rows = data, np.asarray(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, idx: list[int] | np.ndarray) -> dict[str, torch.Tensor]:
        batch = self.data[self.rows[np.asarray(idx)]]
        batch["idx"] = torch.as_tensor(np.sort(np.asarray(idx)))
        return batch


__all__ = ["PerturbationModel", "program_args"]
