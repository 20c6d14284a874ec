"""Cell-level queries: counterfactual cells, held-out likelihood, latent states, artifact and efficacy posteriors."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, cast

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from pertpyro._keys import ARTIFACT_PROB_KEY
from pertpyro._settings import local_params, seeded
from pertpyro._validate import check_query_args
from pertpyro.causal._artifacts import abduct_artifact, artifact_probabilities
from pertpyro.causal._counterfactual import INTERVENABLE_SITES, abduct, intervene, predict_counts
from pertpyro.causal._efficacy import efficacy_probabilities
from pertpyro.causal._population import subset_batch
from pertpyro.data._loader import make_loader
from pertpyro.data._registry import design_matrix, targeting_guides
from pertpyro.data._statistics import log_normalise
from pertpyro.inference._iwelbo import iwelbo_per_cell
from pertpyro.model._base import ModelBase
from pertpyro.module._artifacts import ARTIFACT_KINDS, ArtifactKind, artifact_action
from pertpyro.module._guide_rates import intervention_rates
from pertpyro.posterior._arviz import to_inference_data
from pertpyro.posterior._protocol import FittedModel

EfficacyLevel = Literal["target", "guide", "cell"]
EFFICACY_LEVELS: tuple[EfficacyLevel, ...] = ("target", "guide", "cell")
"""Levels of :meth:`CellsMixin.efficacy_probability`."""

EXPECTED_LAYER = "expected_counts"
"""Layer of :meth:`CellsMixin.predict_cells` with ``expected=True``: posterior-mean counts, not a sample."""

EXPECTED_SAMPLES = 20
"""Posterior draws averaged by :meth:`CellsMixin.predict_cells` with ``expected=True`` (default)."""


def take_cells(adata: AnnData, rows: np.ndarray) -> AnnData:
    """The cells ``rows`` of ``adata`` (repeats allowed) as a new AnnData, named by position, ``uns`` shared.

    ``obs["source_cell"]`` keeps each cell's name in ``adata``.
    """
    obs = adata.obs.iloc[rows].copy()
    obs["source_cell"] = adata.obs_names[rows].to_numpy()
    obs.index = pd.Index([f"{name}-{i}" for i, name in enumerate(obs["source_cell"])])
    layers = {key: value[rows] for key, value in adata.layers.items()}
    return AnnData(adata.X[rows], obs=obs, var=adata.var.copy(), uns=adata.uns, layers=layers)


def _cells_and_labels(
    cells: AnnData, perturbations: str | Sequence[str] | Mapping[str, int], seed: int
) -> tuple[np.ndarray, list[str]]:
    """Rows of ``cells`` to generate from and one label per generated cell."""
    if isinstance(perturbations, str):
        return np.arange(cells.n_obs), [perturbations] * cells.n_obs
    if isinstance(perturbations, Mapping):
        counts = {str(k): int(v) for k, v in perturbations.items()}
        bad = {k: v for k, v in counts.items() if v < 1}
        if bad:
            raise ValueError(f"Each label needs a positive number of cells, got {bad}.")
        labels = [label for label, n in counts.items() for _ in range(n)]
        rows = np.random.default_rng(seed).integers(0, cells.n_obs, size=len(labels)) if cells.n_obs else None
        if rows is None:
            raise ValueError("cells is empty: there are no cells to generate from.")
        return rows, labels
    labels = [str(p) for p in perturbations]
    if len(labels) != cells.n_obs:
        raise ValueError(f"Give one perturbation label per cell: {cells.n_obs} cells, {len(labels)} labels.")
    return np.arange(cells.n_obs), labels


class CellsMixin(ModelBase):
    """``predict_cells``, ``counterfactual``, ``iwelbo``, ``get_latent_representation`` and friends."""

    def predict_cells(
        self,
        cells: AnnData,
        perturbations: str | Sequence[str] | Mapping[str, int],
        *,
        expected: bool = False,
        n_samples: int | None = None,
        batch_size: int = 512,
        seed: int = 0,
    ) -> AnnData:
        """Generate perturbed cells: sampled counts of the posterior predictive, starting from observed cells.

        Each generated cell keeps the basal state of a source cell (drawn from the guide given its counts, as in
        :meth:`counterfactual`), takes its perturbation through ``poutine.do``, and is simulated at the source
        cell's depth: ``X`` holds integer counts, with the count noise, zeros and responder/escaper mix (the
        ``efficacy`` site drawn per cell) of real cells. All labels go through the model in one pass, ``batch_size``
        cells at a time; each chunk takes one draw of the global sites, so every cell is a draw of the posterior
        predictive (cells of one chunk share it). Use it to hand generated cells to tools that score
        distributions of cells, such as cell-eval's differential expression.

        Parameters
        ----------
        cells
            Source cells (e.g. held-out control cells), with the registered genes and obs columns.
        perturbations
            A label for every cell (e.g. ``"STAT1"``), one label per cell (a sequence of ``cells.n_obs`` labels), or
            ``{label: number of cells}``, each generated cell then drawn with replacement from ``cells``.
        expected
            ``False``: sampled counts. ``True``: the posterior-mean expression instead: the negative binomial mean
            of each cell (response summed out) averaged over ``n_samples`` posterior draws, in ``X`` and in
            ``layers["expected_counts"]``; not integers, and without count noise.
        n_samples
            Posterior draws averaged with ``expected=True`` (default 20); sampled counts take one draw per cell.
        batch_size
            Cells per chunk (and per draw of the global sites).
        seed
            Seed of the draws (and of the source cells with a ``{label: count}`` mapping).

        Returns
        -------
        AnnData (generated cells x registered genes) with ``obs`` copied from the source cells, ``obs[perturbation_key]``
        the label, ``obs["source_cell"]`` the source cell's name, and ``uns["pertpyro_predict_cells"]`` saying which
        values ``X`` holds (``"sampled_counts"`` or ``"expected_counts"``).
        """
        n_samples = (EXPECTED_SAMPLES if expected else 1) if n_samples is None else n_samples
        check_query_args(n_samples=n_samples, batch_size=batch_size, seed=seed)
        self._check_trained()
        if not expected and n_samples != 1:
            raise ValueError(
                f"Sampled counts take one posterior draw per cell (n_samples={n_samples}); to generate more cells, "
                "pass {label: number of cells} or repeat the source cells, or use expected=True."
            )
        rows, labels = _cells_and_labels(cells, perturbations, seed)
        designs = torch.from_numpy(design_matrix(labels, self.registry))  # refuses unknown targets
        source = take_cells(cells, rows)
        data = self._cell_data(source)
        with seeded(seed), local_params():
            values = predict_counts(
                self.program,
                self.guide,
                data,
                designs,
                expected=expected,
                n_samples=n_samples,
                batch_size=batch_size,
            ).numpy()
        obs = source.obs.copy()
        obs[self.registry.perturbation_key] = pd.Categorical(labels)
        out = AnnData(values.astype(np.float32), obs=obs, var=pd.DataFrame(index=list(self.registry.genes)))
        if expected:
            out.layers[EXPECTED_LAYER] = out.X
        out.uns["pertpyro_predict_cells"] = {
            "values": EXPECTED_LAYER if expected else "sampled_counts",
            "n_samples": n_samples,
            "seed": seed,
        }
        return out

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
            Posterior draws averaged (each a simulated count vector per cell).
        batch_size
            Cells per chunk.
        seed
            Seed of the draws.

        Returns
        -------
        AnnData (same cells and genes, ``obs`` copied) with ``X`` the posterior mean of ``log1p(1e4 x / sum x)``,
        ``layers["counts"]`` the posterior mean of the counts, ``uns["pertpyro_do"]`` the intervention. Both are
        averages over the ``n_samples`` simulated count vectors of each cell, not cells: they have fewer zeros and
        less spread than real cells and are not integers (with ``n_samples=1``, one draw). For generated cells
        (sampled integer counts, one label per cell) use :meth:`predict_cells`.
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
        data = self._cell_data(cells)
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
                batch = subset_batch(data, rows)
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

    def iwelbo(self, adata: AnnData, *, n_samples: int = 20, batch_size: int = 1024, seed: int = 0) -> float:
        """Mean importance-weighted ELBO (nats per cell) of the cells of ``adata``, e.g. held-out test cells.

        A bound on ``log p(counts, library)``: discrete per-cell states are summed exactly, the artifact states
        included (with the block). Artifact labels are not scored, so models with and without the block compare.
        ``n_samples`` importance samples of the basal state per cell; ``seed`` seeds them.
        """
        check_query_args(n_samples=n_samples, batch_size=batch_size, seed=seed)
        self._check_trained()
        data = self._cell_data(adata, artifact_labels=False)
        values = []
        with seeded(seed):
            for start in range(0, len(data), batch_size):
                rows = np.arange(start, min(start + batch_size, len(data)))
                values.append(iwelbo_per_cell(self.program, self.guide, subset_batch(data, rows), n_samples=n_samples))
        return float(torch.cat(values).mean())

    @torch.no_grad()
    def get_latent_representation(self, adata: AnnData | None = None, *, batch_size: int = 4096) -> np.ndarray:
        """Posterior mean of ``z_basal`` per cell, ``(n_cells, latent_dim)``; write it to ``obsm`` yourself."""
        data = self.cell_data if adata is None else self._cell_data(adata, artifact_labels=False)
        out = []
        for batch in make_loader(data, batch_size=batch_size, shuffle=False):
            loc = self.guide.basal_mean(batch["counts"], batch["batch_index"], batch["perturbation"])
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
        n_samples: int = 30,
        batch_size: int = 2048,
        write: bool = False,
        seed: int = 0,
        kind: ArtifactKind = "any",
    ) -> pd.Series:
        """Posterior probability that each cell is a technical artifact, ``P(artifact = 1 | x, depth, label)``.

        Exact in the artifact state; the basal state is integrated by importance sampling with ``n_samples`` guide
        draws (:func:`pertpyro.module.artifact_posterior`). The labels in ``obs[artifact_key]`` enter as
        evidence in the latent mode when present; in the observed mode they are ignored (the probability is then
        the model's own call from counts and depth).

        Parameters
        ----------
        adata
            Cells to score (default: the training data).
        n_samples
            Importance samples of the basal state.
        batch_size
            Cells per chunk.
        write
            Also write the probabilities to ``adata.obs["pertpyro_artifact_prob"]`` (the only entry written).
        seed
            Seed of the draws.
        kind
            ``"any"``: an artifact of either kind; ``"doublet"`` or ``"low_quality"``: an artifact of that kind
            (e.g. to rank doublets without the low-quality cells among them).

        Returns
        -------
        Series indexed by ``obs_names``.
        """
        check_query_args(n_samples=n_samples, batch_size=batch_size, seed=seed)
        self._check_trained()
        if kind not in ARTIFACT_KINDS:
            raise ValueError(f"kind must be one of {ARTIFACT_KINDS}, got {kind!r}.")
        if self.program.artifact_block is None:
            raise ValueError("This model has no artifact block: build it with artifacts='observed' or 'latent'.")
        target = self.adata if adata is None else adata
        data = self._cell_data(target)
        values = artifact_probabilities(
            self.program, self.guide, data, n_samples=n_samples, batch_size=batch_size, seed=seed, kind=kind
        )
        probs = pd.Series(values, index=target.obs_names.copy(), name=ARTIFACT_PROB_KEY)
        if write:
            target.obs[ARTIFACT_PROB_KEY] = probs.to_numpy()
        return probs

    def efficacy_probability(
        self,
        per: EfficacyLevel = "target",
        adata: AnnData | None = None,
        *,
        n_samples: int = 30,
        batch_size: int = 2048,
        seed: int = 0,
        ci: float = 0.9,
    ) -> pd.Series | pd.DataFrame:
        """Probability that a knockout took effect: per target or per guide (response rates) or per cell (posterior).

        Parameters
        ----------
        per
            ``"target"``: the posterior median of each target's response rate ``rho_t``, the fraction of its cells
            in which the knockout takes (1 for targets without escapers); with per-guide rates, the mixture of the
            target's guides' medians weighted by their training cells (the rate ``do(perturbation=target)`` uses).
            ``"guide"`` (needs ``efficacy_per_guide``): each targeting guide's rate, posterior median and central
            ``ci`` interval. ``"cell"``: each cell's posterior
            ``P(efficacy = 1 | counts, depth)``, exact in the efficacy state, the basal state integrated by
            importance sampling (:func:`pertpyro.module._efficacy.efficacy_posterior`); ``NaN`` for control cells.
        adata
            Cells to score with ``per="cell"`` (default: the training data); ignored per target.
        n_samples
            Importance samples of the basal state per cell (``per="cell"``).
        batch_size
            Cells per chunk (``per="cell"``).
        seed
            Seed of the draws (``per="cell"``).
        ci
            Mass of the credible interval (``per="guide"``).

        Returns
        -------
        Series named ``"efficacy"``, indexed by target or by ``obs_names``; per guide a DataFrame indexed by guide
        with columns ``perturbation`` (the guide's label), ``n_cells`` (training cells), ``median``, ``lower``,
        ``upper``.
        """
        if per not in EFFICACY_LEVELS:
            raise ValueError(f"per must be one of {EFFICACY_LEVELS}, got {per!r}.")
        if per == "guide":
            return self._guide_efficacy(ci)
        if per == "target":
            if not self.program.use_efficacy:  # no escapers: every cell responds
                return pd.Series(1.0, index=list(self.registry.targets), name="efficacy")
            with torch.no_grad():
                rho = intervention_rates(self.program, self.guide.efficacy_medians()).squeeze(-1).numpy()
            return pd.Series(rho, index=list(self.registry.targets), name="efficacy")
        check_query_args(n_samples=n_samples, batch_size=batch_size, seed=seed)
        self._check_trained()
        target = self.adata if adata is None else adata
        data = self._cell_data(target)
        if self.program.use_efficacy:
            values = efficacy_probabilities(
                self.program, self.guide, data, n_samples=n_samples, batch_size=batch_size, seed=seed
            )
        else:  # no escapers: every perturbed cell responds
            values = np.where(data.is_control, np.nan, 1.0)
        return pd.Series(values, index=target.obs_names.copy(), name="efficacy")

    def _guide_efficacy(self, ci: float) -> pd.DataFrame:
        """Per-guide response rates: median and central ``ci`` interval (``efficacy_probability(per="guide")``)."""
        rates, program = self.guide.guide_rates, self.program.guide_rates
        if rates is None or program is None:
            raise ValueError(
                "This model has no per-guide response rates: register a guide column (setup_anndata(..., "
                "guide_key=...)) and build the model with efficacy_per_guide=True."
            )
        if not 0 < ci < 1:
            raise ValueError(f"ci must lie in (0, 1), got {ci}.")
        with torch.no_grad():
            median, (lower, upper) = rates.median(), rates.interval(ci)
            escapes = program.escapes(self.program.efficacy_targets)
            if escapes is not None:  # guides of targets without escapers: every cell responds
                keep = escapes.squeeze(-1)
                median, lower, upper = (torch.where(keep, v, torch.ones(())) for v in (median, lower, upper))
        guides = targeting_guides(self.registry)
        return pd.DataFrame(
            {
                "perturbation": [label for _, label in guides],
                "n_cells": cast(torch.Tensor, program.guide_cells).numpy().astype(np.int64),
                "median": median.numpy(),
                "lower": lower.numpy(),
                "upper": upper.numpy(),
            },
            index=pd.Index([g for g, _ in guides], name="guide"),
        )

    def to_inference_data(self, n_samples: int = 200, **kwargs: Any) -> Any:
        """Posterior of the global sites (and optionally a posterior predictive check) as ``arviz.InferenceData``.

        See :func:`pertpyro.posterior.to_inference_data` for the arguments (``heldout``, ``seed``, ...).
        """
        self._check_trained()
        return to_inference_data(cast("FittedModel", self), n_samples=n_samples, **kwargs)
