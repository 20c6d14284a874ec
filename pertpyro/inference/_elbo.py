"""A lean ELBO for the programs of this package: enumerated sites only in the ``cells`` plate, summed out exactly.

:class:`pyro.infer.TraceEnum_ELBO` handles any graph of enumerated variables by tensor-network contraction. In
pertpyro's programs every enumerated site (``efficacy``, a latent ``artifact``) is a per-cell variable and every
factor that depends on it is a per-cell factor, so the marginal log-likelihood of a cell is one ``logsumexp`` of
the sum of its factors over the enumerated values. :class:`CellEnumELBO` computes exactly that, skipping the
contraction planner, the packing of log-factors and the Dice bookkeeping; it raises where that shortcut would be
wrong (an enumerated site outside the cells plate, factors with different subsampling scales, masked enumerated
factors, a guide site without reparameterised sampling). ``tests/test_elbo.py`` checks that it gives the same
loss and gradients as ``TraceEnum_ELBO``.
"""

from __future__ import annotations

import torch
from pyro import poutine
from pyro.infer import ELBO
from pyro.infer.util import is_validation_enabled
from pyro.poutine.subsample_messenger import _Subsample
from pyro.poutine.util import prune_subsample_sites
from pyro.util import check_model_guide_match


class CellEnumELBO(ELBO):
    """Negative ELBO with per-cell discrete sites summed out exactly (one particle, reparameterised guide).

    Parameters
    ----------
    max_plate_nesting
        Number of plate dimensions of the model; enumerated dimensions sit left of them.
    """

    def __init__(self, max_plate_nesting: int) -> None:
        super().__init__(max_plate_nesting=max_plate_nesting, num_particles=1)

    def _get_trace(self, model, guide, args, kwargs):
        return self._traces(model, guide, args, kwargs)

    def _traces(self, model, guide, args, kwargs, prune: bool = True):
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        enumerated = poutine.enum(model, first_available_dim=-1 - self.max_plate_nesting)
        model_trace = poutine.trace(poutine.replay(enumerated, trace=guide_trace)).get_trace(*args, **kwargs)
        if is_validation_enabled():
            check_model_guide_match(model_trace, guide_trace, self.max_plate_nesting)
        if not prune:  # the plates' index sites stay (differentiable_loss skips them without copying the traces)
            return model_trace, guide_trace
        return prune_subsample_sites(model_trace), prune_subsample_sites(guide_trace)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """The negative ELBO, differentiable in the parameters of model and guide."""
        model_trace, guide_trace = self._traces(model, guide, args, kwargs, prune=False)
        elbo = _ScaledSum()
        enumerated_terms, enumerated_plates, enumerated_scale = [], [], None
        for name, site in model_trace.nodes.items():
            if site["type"] != "sample" or isinstance(site["fn"], _Subsample):
                continue
            log_p = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
            if log_p.dim() > self.max_plate_nesting:  # depends on an enumerated value
                if site["mask"] is not None and site["mask"] is not True:
                    raise NotImplementedError(f"Site {name!r}: masked factors of enumerated sites are not supported.")
                scale = site["scale"]
                if enumerated_scale is not None and not _same(scale, enumerated_scale):
                    raise NotImplementedError(f"Site {name!r}: enumerated factors must share one plate scale.")
                enumerated_scale = scale
                enumerated_terms.append(log_p)
                enumerated_plates.append({f.name for f in site["cond_indep_stack"] if f.vectorized})
            else:
                elbo.add(log_p, site)
        for name, site in guide_trace.nodes.items():
            if site["type"] != "sample" or site["is_observed"] or isinstance(site["fn"], _Subsample):
                continue
            if not site["fn"].has_rsample:
                raise NotImplementedError(f"Guide site {name!r} is not reparameterised; use TraceEnum_ELBO.")
            log_q = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
            elbo.add(log_q, site, sign=-1)
        if enumerated_terms:
            if not enumerated_plates[0] or any(p != enumerated_plates[0] for p in enumerated_plates):
                raise NotImplementedError(
                    "An enumerated site or a factor depending on one lies outside a shared plate, or in further plates "
                    f"({enumerated_plates}); use TraceEnum_ELBO."
                )
            joint = enumerated_terms[0]
            for term in enumerated_terms[1:]:
                joint = joint + term
            enum_dims = tuple(range(joint.dim() - self.max_plate_nesting))
            elbo.add(torch.logsumexp(joint, dim=enum_dims), {"scale": enumerated_scale, "mask": None})
        return -elbo.total()

    def loss(self, model, guide, *args, **kwargs) -> float:
        """The negative ELBO as a float (no gradients)."""
        with torch.no_grad():
            return float(self.differentiable_loss(model, guide, *args, **kwargs))

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """The negative ELBO; gradients are accumulated into the parameters (for ``pyro.infer.SVI``)."""
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        return float(loss.detach())


class _ScaledSum:
    """Sum of the sites' scaled, masked log-densities, with few tensor operations.

    Terms of one plate scale are summed before they are multiplied by it, and terms of one shape are added
    elementwise before they are reduced (the per-cell terms: one reduction, one multiplication by ``N / B``).
    """

    def __init__(self) -> None:
        self._groups: dict = {}  # scale key -> (scale, {shape: signed sum of the terms})

    def add(self, log_p: torch.Tensor, site: dict, sign: int = 1) -> None:
        mask = site["mask"]
        if mask is not None and mask is not True:
            log_p = torch.where(mask, log_p, log_p.new_zeros(()))
        scale = site["scale"]
        key = scale if isinstance(scale, int | float) else id(scale)
        by_shape = self._groups.setdefault(key, (scale, {}))[1]
        previous = by_shape.get(log_p.shape)
        if previous is None:
            by_shape[log_p.shape] = log_p if sign > 0 else -log_p
        else:
            by_shape[log_p.shape] = previous + log_p if sign > 0 else previous - log_p

    def total(self) -> torch.Tensor:
        if not self._groups:
            raise ValueError("The model and guide have no sample sites.")
        total = None
        for scale, by_shape in self._groups.values():
            group = None
            for term in by_shape.values():
                group = term.sum() if group is None else group + term.sum()
            if not (isinstance(scale, int | float) and scale == 1):
                group = scale * group
            total = group if total is None else total + group
        return total


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return a is b or bool(torch.as_tensor(a).eq(torch.as_tensor(b)).all())
    return a == b
