"""The regulatory network of a model built with ``grn=True``: the edge table and edge interventions."""

from __future__ import annotations

import pandas as pd

from pertpyro._keys import GRN_KEY
from pertpyro.model._base import ModelBase
from pertpyro.module._grn import edge_table, varp_matrix


class GRNMixin(ModelBase):
    """``grn()``: the inferred network as an edge table (and optionally a ``varp`` matrix)."""

    def grn(
        self,
        threshold: float | None = None,
        *,
        ci: float = 0.9,
        write_varp: bool = False,
        n_samples: int = 100,
        seed: int = 0,
    ) -> pd.DataFrame:
        """The inferred regulatory network as a tidy edge table (``grn=True``), strongest edges first.

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
        n_samples
            Posterior draws of the network averaged in ``total``.
        seed
            Seed of those draws.

        Returns
        -------
        DataFrame ``source, target, score, prob, weight, ci_lower, ci_upper, total, total_sd`` sorted by ``score``
        (descending).

        - ``score`` (the ranking column) is ``prob * |weight| / sd``: the evidence for the direct edge, its
          posterior inclusion probability times its weight's posterior mean in units of the weight's posterior sd.
          The inclusion probability alone saturates near 1 and ties; the weight's size alone favours the large,
          noisy logit changes of lowly expressed genes.
        - ``prob`` is the posterior inclusion probability of the direct edge.
        - ``weight`` is the posterior mean of the direct edge's logit change of ``target`` per unit of ``source``
          activity, given the edge (a knockout removes one unit: negative weight = the knockout raises the target),
          with its credible interval ``ci_lower``, ``ci_upper``.
        - ``total`` is the posterior-mean *total* effect of knocking out ``source`` on ``target`` (logit shift),
          through every path of the network (direct edge and regulators in between), and ``total_sd`` its posterior
          sd: rank by ``total.abs() / total_sd`` to ask which genes a knockout moves, by ``score`` to ask which
          genes the regulator acts on directly. ``total.abs()`` alone, like the weight's size alone, favours the
          noisy changes of lowly expressed genes.
        """
        if self.program.grn is None or self.guide.grn is None or self.regulators is None:
            raise ValueError("This model has no GRN block: build it with PerturbationModel(..., grn=True).")
        self._check_trained()
        genes = list(self.registry.genes)
        table = edge_table(
            self.guide.grn,
            self.program.grn,
            self.regulators,
            genes,
            ci=ci,
            threshold=threshold,
            n_samples=n_samples,
            seed=seed,
        )
        if write_varp:
            if not any(r in set(genes) for r in self.regulators):
                raise ValueError("No regulator is a measured gene: there is no gene x gene matrix to write to varp.")
            full = table if threshold is None else self.grn(None, ci=ci, n_samples=n_samples, seed=seed)
            self.adata.varp[GRN_KEY] = varp_matrix(full, genes)
        return table

    def grn_prior_reliability(self) -> dict[str, float]:
        """How far the prior network (``grn_prior``) is believed, as learned from the data.

        Returns
        -------
        ``n_prior_edges`` (prior pairs among the regulator -> gene pairs), ``prior_edge_inclusion`` (learned prior
        inclusion probability of a listed pair, started at ``grn_prior_inclusion``; NaN without a prior network),
        ``other_inclusion`` (of an unlisted pair: ``grn_density``) and ``odds_ratio`` (the first's odds over the
        second's: 1 means the prior network carries no information the data support).
        """
        if self.program.grn is None:
            raise ValueError("This model has no GRN block: build it with PerturbationModel(..., grn=True).")
        self._check_trained()
        return self.program.grn.prior_reliability()
