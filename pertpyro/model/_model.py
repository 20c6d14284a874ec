"""``PerturbationModel``: the user-facing class, from a registered AnnData to effects with uncertainty.

The class holds the state (registry, training cells, program, guide, records of the fit) and its constructor; its
methods come from mixins, one family each: training (:mod:`._training`), population effects (:mod:`._effects`),
cell-level queries (:mod:`._cells`) and the network (:mod:`._grn`).
"""

from __future__ import annotations

import inspect
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from pertpyro._io import (
    SETTINGS_FILE,
    TENSORS_FILE,
    ModelFileError,
    atomic_write_text,
    read_model_files,
    write_model_files,
)
from pertpyro._settings import local_params, seeded
from pertpyro._version import __version__
from pertpyro.data._artifact_evidence import evidence_columns
from pertpyro.data._loader import CellData
from pertpyro.data._registry import Registry, get_registry, perturbation_labels
from pertpyro.model._cells import CellsMixin
from pertpyro.model._effects import EffectsMixin
from pertpyro.model._grn import GRNMixin
from pertpyro.model._init import (
    build_grn,
    check_block_options,
    efficacy_prior,
    efficacy_targets,
    gene_log_share,
    guide_table,
    initial_effects,
    library_moments,
    orphan_options,
    resolve_efficacy,
    resolve_per_guide,
)
from pertpyro.model._training import TrainingMixin
from pertpyro.module._artifacts import ArtifactMode, check_artifact_mode, robust_library_init
from pertpyro.module._components import inverse_softplus
from pertpyro.module._grn import GRNPrior
from pertpyro.module._program import EFFICACY_INIT_LOGIT, PerturbationGuide, PerturbationProgram
from pertpyro.posterior._intervals import IntervalCalibration

logger = logging.getLogger(__name__)


class PerturbationModel(TrainingMixin, EffectsMixin, CellsMixin, GRNMixin):
    """Bayesian model of a CRISPR perturbation screen (SAMS-VAE family, with knockout efficacy).

    Each cell's counts are a negative binomial around ``library * softmax(decoder(z_basal) + shift)``, where the
    shift is the sum of sparse per-target effects on the gene logits, applied only if the knockout took in that
    cell (``efficacy``). See :class:`pertpyro.module.PerturbationProgram` for the generative story and :mod:`pertpyro.module.sites` for
    the site names.

    Parameters
    ----------
    adata
        AnnData registered with :func:`pertpyro.setup_anndata` (raw counts); the training cells.
    latent_dim
        Dimension of the basal latent state.
    n_hidden
        Hidden width of the encoder and decoder (decoder: 0 = linear).
    sparse_effects
        Spike-and-slab ``effect_mask`` on the effects (off: the per-gene Student-t prior alone).
    efficacy
        Per-cell ``efficacy`` latent (cells that escaped the knockout): ``True`` for every target (uniform prior on
        its response rate), ``False`` (no escapers), a list of the targets that may have escapers (the others' cells
        all respond), ``"strong"``: the targets whose own label's observed shift in ``adata`` has a signal-to-noise
        ratio of at least 3 (:func:`pertpyro.data.strong_perturbations`; resolved once, here, on the training data,
        and stored as the list), or ``"auto"``: every target, the response rates sharing a ``Beta(a, 1)`` prior with
        ``a >= 1`` learned across targets (empirical Bayes). For knockouts with weak effects the escaper mixture can
        fit basal heterogeneity shared by all labels instead of escapers (on Papalexi ``"auto"`` leaves the weak knockouts
        with rates between 0.09 and 0.43; ``benchmarks/results/defaults_papalexi.json``); ``"strong"``
        keeps it for the knockouts with a clear shift.
    mask_prior
        Initial prior inclusion probability of an effect.
    encode_perturbation
        Whether the basal-state encoder sees each cell's targets (helps it leave the effects to ``effect``).
    effect_df
        Degrees of freedom of the Student-t prior on the effects (0: Normal prior). The default 4 has heavy tails:
        a target's rare strong effect on a gene is not shrunk toward the per-gene scale of the many null effects,
        while weak effects still are.
    independence
        Weight of the training penalty that keeps the mean basal state of each target's cells at that of the
        control cells (:mod:`pertpyro.module._independence`), so that a knockout's effect is held by ``effect``
        (and reaches every prediction, which draws basal states from control cells) rather than by ``z_basal``;
        0: off.
    latent_effects
        Each target also shifts the latent state the decoder reads (site ``latent_effect``, SAMS-VAE's latent
        perturbation embeddings), besides its gene-space ``effect``: a knockout that moves cells along a program of
        basal variation is held by one vector per target rather than by the perturbed cells' basal states, so that
        queries, which draw basal states from control cells, carry it. Not with ``grn``.
    efficacy_per_guide
        Per-guide response rates (site ``efficacy_guide_rate``; :mod:`pertpyro.module._guide_rates`): each guide of
        the registered guide column (``setup_anndata(..., guide_key=...)``) has its own rate, drawn around its
        target's rate ``efficacy_rate`` with a spread learned across guides, and a cell responds at its own
        guide's rate. Under ``do(perturbation=...)`` a cell takes the mixture of the target's guides weighted by
        their training cells (the screen's guides in their proportions); the guides of targets without escapers
        keep a rate of 1. Off by default: on Papalexi it raises the held-out likelihood but not the held-out
        effects (``benchmarks/results/guide_efficacy_papalexi.json``).
    artifacts
        Technical-artifact block (:class:`pertpyro.module.ArtifactBlock`): ``None`` (off); ``"observed"``: the boolean
        labels ``obs[artifact_key]`` (e.g. from :func:`pertpyro.pp.qc`) are the ``artifact`` site's values;
        ``"latent"``: they are noisy evidence and each cell's artifact state is inferred (labels optional). With the
        block on, the data may hold only control cells (the model is then a doublet / low-quality-cell detector).
    artifact_key
        ``obs`` column of the artifact labels (read, never written).
    artifact_evidence
        Per-cell QC evidence of the artifact state (with ``artifacts``): ``obs`` columns observed by the block with a
        learned law per state (clean, doublet, low-quality; :mod:`pertpyro.data._artifact_evidence`). ``"auto"``:
        Scrublet's ``doublet_score`` (from :func:`pertpyro.pp.qc`) where present; ``None``: none; or a list of
        columns (e.g. ``["doublet_score", "pct_counts_mt"]``). The same columns are read from every AnnData the
        model scores.
    seed
        Seed of the parameter initialisation.
    grn
        Replace the free per-target effects by knockouts propagated through a sparse regulator -> gene network
        (sites ``adjacency``, ``adjacency_weight``; :class:`pertpyro.module.GRNPrior`). Regulators are the targets, then ``grn_regulators``.
        The ``grn_*`` options belong to this block, as ``mask_prior`` belongs to ``sparse_effects`` and
        ``artifact_key`` / ``artifact_evidence`` to ``artifacts``: set while their block is off they raise a
        ``ValueError`` instead of being ignored (models saved with such a setting load with it at its default).
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
    grn_init_lasso
        Start the edges from a sparse regression of the targets' moment effects on the regulators' activities
        (:func:`pertpyro.module._grn.lasso_edge_init`, this value its L1 penalty): a gene moved in several knockouts
        that all move one regulator starts on that regulator's edge, not on one direct edge per knockout, the local
        optimum a fit started at zero can settle in. ``None``: every edge starts at weight 0. It trades: on the
        simulator it lifts the held-out regulator a fit from zero predicts worst and lowers another, and on the
        shipped Papalexi screen its network ranks CollecTRI's edges worse
        (``benchmarks/results/grn_simulator_lasso_seed*.json``, ``grn_papalexi.json``), so it is off by default.
    """

    def __init__(
        self,
        adata: AnnData,
        *,
        latent_dim: int = 10,
        n_hidden: int = 128,
        sparse_effects: bool = False,
        efficacy: bool | Literal["auto", "strong"] | Sequence[str] = True,
        mask_prior: float = 0.5,
        encode_perturbation: bool = True,
        effect_df: float = 4.0,
        independence: float = 0.0,
        latent_effects: bool = False,
        efficacy_per_guide: bool = False,
        artifacts: ArtifactMode | None = None,
        artifact_key: str = "artifact",
        artifact_evidence: Sequence[str] | Sequence[tuple[str, str]] | Literal["auto"] | None = "auto",
        seed: int = 0,
        grn: bool = False,
        grn_prior: pd.DataFrame | str | None = None,
        grn_regulators: Sequence[str] | None = None,
        grn_steps: int = 3,
        grn_density: float = 0.05,
        grn_prior_inclusion: float = 0.5,
        grn_weight_scale: float = 1.0,
        grn_init_lasso: float | None = None,
    ) -> None:
        self.registry = get_registry(adata)
        block_options = {
            "grn": grn,
            "grn_prior": grn_prior,
            "grn_regulators": grn_regulators,
            "grn_steps": grn_steps,
            "grn_density": grn_density,
            "grn_prior_inclusion": grn_prior_inclusion,
            "grn_weight_scale": grn_weight_scale,
            "grn_init_lasso": grn_init_lasso,
            "sparse_effects": sparse_effects,
            "mask_prior": mask_prior,
            "artifacts": artifacts,
            "artifact_key": artifact_key,
            "artifact_evidence": artifact_evidence,
        }
        check_block_options(block_options, OPTION_DEFAULTS)
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
        self.init_kwargs = {
            "latent_dim": latent_dim,
            "n_hidden": n_hidden,
            "sparse_effects": sparse_effects,
            "efficacy": resolve_efficacy(efficacy, adata, self.registry),
            "mask_prior": mask_prior,
            "encode_perturbation": encode_perturbation,
            "effect_df": effect_df,
            "independence": independence,
            "latent_effects": latent_effects,
            "artifacts": artifacts,
            "artifact_key": artifact_key,
            "artifact_evidence": evidence_columns(adata, artifact_evidence) if artifacts is not None else [],
            "seed": seed,
        }
        if resolve_per_guide(efficacy_per_guide, self.registry, self.init_kwargs["efficacy"]):
            self.init_kwargs["efficacy_per_guide"] = True  # only stored when on: saved models keep their settings
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
            if grn_init_lasso is not None:  # only stored when set: saved models keep their settings
                if not grn_init_lasso > 0:
                    raise ValueError(f"grn_init_lasso must be positive (or None), got {grn_init_lasso!r}.")
                self.init_kwargs["grn_init_lasso"] = float(grn_init_lasso)
        self.adata = adata
        data = self._cell_data(adata, required=artifacts == "observed", check=False)  # checked at setup
        self.cell_data = data
        n_batches = self.registry.n_batches
        # seeded: the initialisation draws from ``seed`` and leaves the caller's global random states as they were;
        # local mode: the PyroModules keep their parameters to themselves
        with seeded(seed), local_params():
            self._build(data, adata, n_batches)
        self.history_ = None
        self.is_trained = False
        self.train_settings_ = {}
        self._validation_adata = None
        self.interval_calibration_ = None

    def _build(self, data: CellData, adata: AnnData, n_batches: int) -> None:
        kw = self.init_kwargs
        stats = data.statistics()  # one chunked pass when the counts are on disk
        grn_block: GRNPrior | None = None
        self.regulators = None
        if kw.get("grn", False):  # 0.731: the response rate the efficacy logits start at (sigmoid(1))
            grn_block, self.regulators = build_grn(self.registry, data, initial_effects(stats, 0.731), kw)
        guide_design, guide_cells = None, None
        if kw.get("efficacy_per_guide", False):
            guide_design, guide_cells = guide_table(self.registry, data)
        self.program = PerturbationProgram(
            self.registry.n_genes,
            self.registry.n_targets,
            n_batches,
            kw["latent_dim"],
            n_hidden=kw["n_hidden"],
            target_frequency=torch.from_numpy(data.target_frequency()),
            gene_bias=gene_log_share(stats.gene_totals),
            sparse_effects=kw["sparse_effects"],
            efficacy=kw["efficacy"] is not False,
            efficacy_targets=efficacy_targets(kw["efficacy"], self.registry.targets),
            efficacy_prior=efficacy_prior(kw["efficacy"]),
            mask_prior=kw["mask_prior"],
            effect_df=kw["effect_df"],
            independence=kw.get("independence", 0.0),  # models saved without the setting trained without it
            latent_effects=kw.get("latent_effects", False),
            guide_design=guide_design,
            guide_cells=guide_cells,
            library_init=library_moments(data, n_batches),
            grn=grn_block,
            artifacts=kw["artifacts"],
            n_artifact_evidence=len(kw["artifact_evidence"]),
        )
        if kw["artifacts"] is not None:
            robust_library_init(self.program, np.log(data.library), data.batch_index)
            block = self.program.artifact_block
            if block is not None and data.artifact_evidence is not None:
                block.init_evidence(data.artifact_evidence)
        effects = initial_effects(stats, float(torch.sigmoid(torch.tensor(EFFICACY_INIT_LOGIT))))
        # Targets without training cells have no data to start from: their effects start at the prior (mean 0,
        # the prior's scale), so that they stay the prior and their intervals say so.
        unseen = torch.from_numpy(data.target_frequency() == 0)
        with torch.no_grad():  # sigma_g starts at the root-mean-square of the moment estimates across targets
            if bool((~unseen).any()):  # (no targets: an all-control data set for the artifact model)
                rms = effects[~unseen].pow(2).mean(0).sqrt().clamp(0.05, 2.0)
                self.program.effect_prior_raw_scale.copy_(inverse_softplus(rms))
        self.guide = PerturbationGuide(
            self.program, n_batches, n_hidden=kw["n_hidden"], encode_perturbation=kw["encode_perturbation"]
        )
        if effects.shape[0] > 0 and grn_block is None:  # the effects start at their moment estimates, too
            with torch.no_grad():
                self.guide.effect_loc.copy_(torch.where(unseen[:, None], 0.0, effects))
                df = self.program.effect_df  # the prior's standard deviation: sigma_g, times sqrt(df / (df - 2))
                prior_sd = self.program.effect_prior_scale() * (math.sqrt(df / (df - 2)) if df > 2 else 1.0)
                prior_raw_scale = inverse_softplus(prior_sd).expand_as(effects)
                self.guide.effect_raw_scale.copy_(
                    torch.where(unseen[:, None], prior_raw_scale, self.guide.effect_raw_scale)
                )

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the model to folder ``path``: ``model.pt`` (tensors only), ``settings.json`` and ``registry.json``.

        Every file is written atomically (a temporary file, then a rename), so an interrupted save never leaves a
        half-written file. ``overwrite=False`` refuses a folder that already holds a model.
        """
        path = Path(path)
        target = path / TENSORS_FILE
        if target.exists() and not overwrite:
            raise FileExistsError(f"{target} exists; pass overwrite=True to replace it.")
        path.mkdir(parents=True, exist_ok=True)
        calibration = self.interval_calibration_
        settings = {
            "version": __version__,
            "init_kwargs": self.init_kwargs,
            "registry": self.registry.to_dict(),
            "history": None if self.history_ is None else self.history_.to_dict(orient="list"),
            "is_trained": self.is_trained,
            "interval_calibration": None if calibration is None else [calibration.scale, calibration.relative],
            "train_settings": self.train_settings_,
        }
        write_model_files(path, {"program": self.program.state_dict(), "guide": self.guide.state_dict()}, settings)
        atomic_write_text(path / "registry.json", json.dumps(self.registry.to_dict(), indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path, adata: AnnData) -> PerturbationModel:
        """Rebuild a saved model on ``adata`` (the training data, or data with the same genes and targets).

        The tensors are read with ``torch.load(weights_only=True)``: nothing in the file runs. A truncated or damaged
        file raises :class:`~pertpyro.ModelFileError` naming it.
        """
        tensors, state = read_model_files(path)
        try:
            saved = Registry.from_dict(state["registry"])
            init_kwargs = dict(state["init_kwargs"])
            init_kwargs.setdefault("artifact_evidence", None)  # saved before the evidence existed: none
            init_kwargs.setdefault("efficacy_per_guide", False)  # stored only when on
        except (KeyError, TypeError, ValueError) as err:
            raise ModelFileError(Path(path) / SETTINGS_FILE, f"bad entry: {err}") from err
        current = get_registry(adata)
        if saved.genes != current.genes or saved.targets != current.targets or saved.batches != current.batches:
            raise ValueError("The AnnData's registered genes, targets or batches differ from the saved model's.")
        if init_kwargs["efficacy_per_guide"] and (saved.guides, saved.guide_labels) != (
            current.guides,
            current.guide_labels,
        ):
            raise ValueError("The AnnData's registered guides differ from the saved model's (it has per-guide rates).")
        for name in orphan_options(init_kwargs, OPTION_DEFAULTS):  # saved when such options were ignored
            init_kwargs[name] = OPTION_DEFAULTS[name]
        # The Lasso only gives starting values, which the saved parameters replace: not run again on loading.
        lasso = init_kwargs.pop("grn_init_lasso", None)
        model = cls(adata, **init_kwargs)
        if lasso is not None:
            model.init_kwargs["grn_init_lasso"] = lasso
        try:
            with local_params():
                model.program.load_state_dict(tensors["program"])
                model.guide.load_state_dict(tensors["guide"])
        except (KeyError, RuntimeError) as err:  # missing entries or shapes that do not fit the settings
            raise ModelFileError(Path(path) / TENSORS_FILE, f"parameters do not fit the settings: {err}") from err
        model.registry = saved
        model.history_ = None if state.get("history") is None else pd.DataFrame(state["history"])
        model.is_trained = bool(state.get("is_trained", False))
        model.train_settings_ = dict(state.get("train_settings") or {})
        calibration = state.get("interval_calibration")
        model.interval_calibration_ = None if calibration is None else IntervalCalibration(*calibration)
        return model

    def __repr__(self) -> str:
        r = self.registry
        status = "trained" if self.is_trained else "untrained"
        return (
            f"PerturbationModel({self.adata.n_obs} cells x {r.n_genes} genes, {r.n_targets} targets, "
            f"latent_dim={self.init_kwargs['latent_dim']}, {status})"
        )


OPTION_DEFAULTS: dict[str, object] = {
    name: parameter.default
    for name, parameter in inspect.signature(PerturbationModel.__init__).parameters.items()
    if parameter.default is not inspect.Parameter.empty
}
"""The default of every option of :class:`PerturbationModel`."""

__all__ = ["PerturbationModel"]
