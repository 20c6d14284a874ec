"""The regulatory network of a model built with ``grn=True``: the edge table and edge interventions."""

from __future__ import annotations

import pandas as pd

from pertpyro._keys import GRN_KEY
from pertpyro.model._base import ModelBase
from pertpyro.module._grn import edge_table, varp_matrix


class GRNMixin(ModelBase):
    """``grn()``: the inferred network as an edge table (and optionally a ``varp`` matrix)."""

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
        if self.program.grn is None or self.guide.grn is None or self.regulators is None:
            raise ValueError("This model has no GRN block: build it with PerturbationModel(..., grn=True).")
        self._check_trained()
        genes = list(self.registry.genes)
        table = edge_table(self.guide.grn, self.program.grn, self.regulators, genes, ci=ci, threshold=threshold)
        if write_varp:
            if not any(r in set(genes) for r in self.regulators):
                raise ValueError("No regulator is a measured gene: there is no gene x gene matrix to write to varp.")
            full = table if threshold is None else self.grn(None, ci=ci)
            self.adata.varp[GRN_KEY] = varp_matrix(full, genes)
        return table
