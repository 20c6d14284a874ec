"""Population-level causal queries: average treatment effects, their draws, probabilities and calibration."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, cast

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from pertpyro._validate import check_query_args
from pertpyro.causal._ate import Estimator, average_treatment_effect, label_shift_draws
from pertpyro.causal._factual import own_cell_shifts, shrunk_depth_shifts
from pertpyro.causal._population import subsample_rows, subset_batch
from pertpyro.causal._probability import FdrRule, check_query, exceedance_table
from pertpyro.data._controls import negative_control_labels
from pertpyro.data._registry import design_matrix, perturbation_labels
from pertpyro.model._base import ModelBase
from pertpyro.posterior._intervals import IntervalCalibration, null_calibration
from pertpyro.posterior._protocol import FittedModel
from pertpyro.posterior._replica import calibrate_by_replica

logger = logging.getLogger(__name__)

Basal = Literal["own", "control"]
"""Whose basal states :meth:`EffectsMixin.predict_shift` predicts a label from: its own training cells' or the
control cells'."""
BASALS = ("own", "control")


class EffectsMixin(ModelBase):
    """``ate``, ``ate_draws``, ``ate_probability``, ``predict_shift`` and ``calibrate``."""

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
        estimator: Estimator = "simulate",
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
            :class:`~pertpyro.posterior.IntervalCalibration`); ``False``: the raw equal-tailed posterior
            quantiles. Without a calibration the intervals are the raw quantiles either way.
        estimator
            How the expectation over the count noise is taken in each posterior draw: ``"simulate"`` averages
            simulated counts (coupled across arms; the reference); ``"analytic"`` computes it per cell and gene
            (a quadrature of the negative binomial's generating function, :mod:`pertpyro.causal._analytic`), all
            labels vectorised: no count noise; ``"table"`` reads the same expectation from one table per gene of the
            population (:mod:`pertpyro.causal._table`), built once per query, at a cost per label and draw of a
            few operations per gene: the estimator for all-target tables of thousands of targets (with
            ``match_batches`` or a ``grn`` model it computes ``"analytic"``).

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
            estimator=estimator,
        )

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
        estimator: Estimator = "simulate",
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
            estimator=estimator,
        ).numpy()

    def ate_probability(
        self,
        perturbations: Sequence[str] | str | None = None,
        *,
        threshold: float = 0.1,
        n_samples: int = 100,
        fdr: float | None = None,
        calibration: IntervalCalibration | Literal[False] | None = None,
        rule: FdrRule = "local",
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
            A recalibration of the posterior (:func:`pertpyro.posterior.fit_interval_calibration`): probabilities
            from its widened Normal instead of the raw draws. ``None`` (default): the one :meth:`calibrate`
            fitted, if any; ``False``: the raw draws.
        rule
            ``"local"``: call effects whose own probability of being null, ``1 - probability``, is at most ``fdr``;
            ``"set"``: the largest set whose mean ``1 - probability`` is at most ``fdr`` (more calls, and a realised
            FDR above ``fdr`` on simulated screens; see :func:`pertpyro.causal.bayesian_fdr_calls`).
        **kwargs
            ``responders``, ``cells``, ``max_cells``, ``match_batches``, ``seed`` as in :meth:`ate`.

        Returns
        -------
        Tidy DataFrame with columns ``perturbation``, ``gene``, ``mean``, ``probability`` (``hit``, ``lfdr_set``).
        """
        check_query(threshold, fdr)  # before the draws
        labels = self._labels(perturbations)
        draws = self.ate_draws(labels, n_samples=n_samples, **kwargs)
        recalibration = self.interval_calibration_ if calibration is None or calibration is True else calibration
        return exceedance_table(
            draws,
            labels,
            self.registry.genes,
            threshold=threshold,
            fdr=fdr,
            calibration=recalibration or None,
            rule=rule,
        )

    def predict_shift(
        self,
        labels: Sequence[str],
        *,
        n_samples: int = 30,
        seed: int = 0,
        basal: Basal = "own",
        max_cells: int | None = 2000,
    ) -> pd.DataFrame:
        """Posterior-mean observed shift per label, ``labels x genes`` (what :func:`pertpyro.evaluation.ate_metrics` reads).

        The shift a new sample of the label's cells will show against control cells.

        Parameters
        ----------
        labels
            Perturbation labels (seen targets, combinations of them, the control label).
        n_samples
            Posterior draws.
        seed
            Seed of the draws and of the subsamples of cells.
        basal
            ``"own"`` (default): a label with training cells is predicted from those cells, each at its own
            posterior basal state under ``do(label)`` (their depths moved together to the label's empirical-Bayes
            shrunk depth shift), against the control cells under ``do(control)`` (:mod:`pertpyro.causal._factual`).
            The fit's basal states of a knockout's cells hold part of its effect (on the shipped Papalexi screen the
            corrected held-out slope of the six strong knockouts is 0.78 / 0.71 over control cells' basal states and
            0.88 / 0.80 over their own, ``benchmarks/results/defaults_papalexi.json``); this keeps that part. Labels
            without training cells (unseen combinations, held-out targets) are predicted as with ``"control"``.
            ``"control"``: every label from the control cells' basal states, the ATE with each arm at its label's
            batch composition (``ate(..., match_batches=True)``), the causal effect the intervals of :meth:`ate`
            describe.
        max_cells
            Cells per population (each label's own cells, the control cells), at most.
        """
        if basal not in BASALS:
            raise ValueError(f"basal must be one of {BASALS}, got {basal!r}.")
        check_query_args(n_samples=n_samples, max_cells=max_cells, seed=seed)
        self._check_trained()
        labels = self._labels(labels)
        unique = list(dict.fromkeys(labels))
        genes = list(self.registry.genes)
        train_labels = perturbation_labels(self.adata, self.registry)
        own = []
        if basal == "own":
            seen = set(train_labels.tolist()) - {self.registry.control}
            own = [label for label in unique if label in seen]
        others = [label for label in unique if label not in own]
        out = pd.DataFrame(np.nan, index=unique, columns=genes)
        if others:
            table = self.ate(others, n_samples=n_samples, seed=seed, match_batches=True, max_cells=max_cells)
            out.loc[others] = table.pivot(index="perturbation", columns="gene", values="mean").loc[others, genes]
        if own:
            depth = shrunk_depth_shifts(np.log(self.cell_data.library), train_labels, self.registry.control)
            populations = []
            for label in own:
                cells = subset_batch(
                    self.cell_data, subsample_rows(np.flatnonzero(train_labels == label), max_cells, seed)
                )
                raw, shrunk = depth[label]
                cells["library"] = cells["library"] * float(np.exp(shrunk - raw))  # the label's depth shift, shrunk
                populations.append(cells)
            shifts = own_cell_shifts(
                self.program,
                self.guide,
                populations,
                torch.from_numpy(design_matrix(own, self.registry)),
                self._population(None, max_cells, seed),
                n_samples=n_samples,
                seed=seed,
            )
            out.loc[own] = shifts.numpy()
        return out.loc[labels]

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
        :meth:`save` stores it). Costs one more training per replica. See :func:`pertpyro.posterior.calibrate_by_replica`.
        When the training data hold null pseudo-targets (:func:`pertpyro.data.add_negative_controls`), the scale
        is widened further until their intervals cover zero at the nominal rates
        (:func:`pertpyro.posterior.null_calibration`): the replica cannot show misfit, the real screen's nulls can.

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
        self._check_trained()
        if perturbations is None:
            observed = set(perturbation_labels(self.adata, self.registry)) - {self.registry.control}
            perturbations = sorted(observed)
        labels = self._labels(perturbations)
        settings = {**self.train_settings_, **train_kwargs}

        model_class = cast("Callable[..., FittedModel]", type(self))

        def fit_replica(replica: AnnData, replica_validation: AnnData | None) -> FittedModel:
            refit = model_class(replica, **self.init_kwargs)
            refit.train(**{**settings, "validation_adata": replica_validation})
            return refit

        result = calibrate_by_replica(
            cast("FittedModel", self),
            labels,
            fit_replica=fit_replica,
            validation_adata=self._validation_adata,
            n_replicas=n_replicas,
            n_samples=n_samples,
            max_cells=max_cells,
            seed=seed,
        )
        self.interval_calibration_ = result.calibration
        nulls = negative_control_labels(self.adata)
        if nulls:  # the real screen's own nulls widen what the replicas cannot see (misfit)
            null_draws = self.ate_draws(nulls, n_samples=n_samples, max_cells=max_cells, seed=seed)
            self.interval_calibration_ = null_calibration(null_draws, result.calibration)
        logger.info(
            "Interval calibration: scale %.2f, relative %.2f.",
            self.interval_calibration_.scale,
            self.interval_calibration_.relative,
        )
        return result.coverage
