"""State and helpers shared by the mixins of :class:`~pertpyro.PerturbationModel`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from pertpyro.causal._population import batch_weights, subsample_rows, subset_batch
from pertpyro.data._loader import CellData
from pertpyro.data._registry import Registry, perturbation_labels
from pertpyro.data._setup import check_query_cells
from pertpyro.module._grn import EdgeAction, adjacency_action, edge_intervention
from pertpyro.module._program import PerturbationGuide, PerturbationProgram
from pertpyro.posterior._intervals import IntervalCalibration


class ModelBase:
    """What every mixin reads: the registry, the training data, the program, the guide and the fit's records."""

    registry: Registry
    adata: AnnData
    cell_data: CellData
    """The training cells as tensors (counts, design, batch, depth), read in chunks when ``adata`` is backed."""
    program: PerturbationProgram
    guide: PerturbationGuide
    init_kwargs: dict[str, Any]
    regulators: list[str] | None
    history_: pd.DataFrame | None
    is_trained: bool
    train_settings_: dict[str, Any]
    interval_calibration_: IntervalCalibration | None
    _validation_adata: AnnData | None

    def _check_trained(self) -> None:
        if not self.is_trained:
            raise RuntimeError("The model is not trained yet: call model.train() first.")

    def _labels(self, perturbations: Sequence[str] | str | None) -> list[str]:
        if perturbations is None:
            return list(self.registry.targets)
        if isinstance(perturbations, str):
            return [perturbations]
        return [str(p) for p in perturbations]

    def _artifact_data_kwargs(self, *, required: bool = False) -> dict[str, Any]:
        """``CellData`` options reading the artifact labels (none when the block is off)."""
        if self.init_kwargs["artifacts"] is None:
            return {}
        return {
            "artifact_key": self.init_kwargs["artifact_key"],
            "require_artifact": required,
            "artifact_evidence": [tuple(pair) for pair in self.init_kwargs.get("artifact_evidence") or []],
        }

    def _cell_data(
        self, adata: AnnData, *, artifact_labels: bool = True, required: bool = False, check: bool = True
    ) -> CellData:
        """``adata`` as tensors for this model (with its artifact labels when the block is on and asked for).

        With ``check``, the cells are held to the data contract of :func:`pertpyro.setup_anndata` first (an AnnData
        of raw counts with the registered genes), so that a query refuses log-normalised or empty data up front.
        """
        if check:
            check_query_cells(adata, self.registry)
        kwargs = self._artifact_data_kwargs(required=required) if artifact_labels else {}
        return CellData(adata, self.registry, guides=bool(self.init_kwargs.get("efficacy_per_guide")), **kwargs)

    def _population_rows(self, cells: AnnData | None, max_cells: int | None, seed: int) -> np.ndarray:
        """Rows of the query population: the training control cells (``cells=None``) or ``cells``, subsampled."""
        if cells is None:
            rows = np.flatnonzero(perturbation_labels(self.adata, self.registry) == self.registry.control)
        else:
            rows = np.arange(cells.n_obs)
        return subsample_rows(rows, max_cells, seed)

    def _population(self, cells: AnnData | None, max_cells: int | None, seed: int) -> dict[str, torch.Tensor]:
        data = self.cell_data if cells is None else self._cell_data(cells, artifact_labels=False)
        return subset_batch(data, self._population_rows(cells, max_cells, seed))

    def _batch_weights(self, labels: Sequence[str], population: dict[str, torch.Tensor]) -> np.ndarray:
        """Per-label weights of population cells matching each label's training batch composition."""
        return batch_weights(
            labels,
            population["batch_index"].numpy(),
            perturbation_labels(self.adata, self.registry),
            self.cell_data.batch_index,
            self.registry.n_batches,
        )

    def _edge_action(self, do: Mapping[str, Any] | None) -> EdgeAction | None:
        if not do:
            return None
        unknown = sorted(set(do) - {"adjacency"})
        if unknown:
            raise ValueError(f"ate(do=...) accepts only 'adjacency' (edge interventions), got {unknown}.")
        if self.program.grn is None:
            raise ValueError("This model has no GRN block: build it with PerturbationModel(..., grn=True).")
        where, value = edge_intervention(do["adjacency"], self.regulators or [], list(self.registry.genes))
        return adjacency_action(where, value)
