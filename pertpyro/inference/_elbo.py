"""A lean ELBO for the programs of this package: enumerated sites only in the ``cells`` plate, summed out exactly.

:class:`pyro.infer.TraceEnum_ELBO` handles any graph of enumerated variables by tensor-network contraction. In
pertpyro's programs every enumerated site (``efficacy``, a latent ``artifact``) is a per-cell variable and every
factor that depends on it is a per-cell factor, so the marginal log-likelihood of a cell is one ``logsumexp`` of
the sum of its factors over the enumerated values. :class:`CellEnumELBO` computes exactly that, skipping the
contraction planner, the packing of log-factors and the Dice bookkeeping; it raises where that shortcut would be
wrong (an enumerated site outside the cells plate, factors with different subsampling scales, masked enumerated
factors, a guide site without reparameterised sampling). ``tests/test_elbo.py`` checks that it gives the same
loss and gradients as ``TraceEnum_ELBO``.

Without Pyro's validation (training), the sample sites are recorded by a small messenger instead of
``poutine.trace`` / ``poutine.replay`` / ``poutine.enum`` (no ``Trace`` objects, no copies of the messages, one
handler instead of three), and the terms are summed
with one reduction and one ``N / B`` multiplication per shape and plate scale; ``tests/test_fast_step.py`` checks
that this gives the traced path's numbers exactly.
"""

from __future__ import annotations

import torch
from pyro import poutine
from pyro.distributions.torch_distribution import TorchDistributionMixin
from pyro.infer import ELBO
from pyro.infer.util import is_validation_enabled
from pyro.poutine.messenger import Messenger
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

    def _traces(self, model, guide, args, kwargs):
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        enumerated = poutine.enum(model, first_available_dim=-1 - self.max_plate_nesting)
        model_trace = poutine.trace(poutine.replay(enumerated, trace=guide_trace)).get_trace(*args, **kwargs)
        if is_validation_enabled():
            check_model_guide_match(model_trace, guide_trace, self.max_plate_nesting)
        return prune_subsample_sites(model_trace), prune_subsample_sites(guide_trace)

    def _sites(self, model, guide, args, kwargs) -> tuple[dict, dict]:
        """The sample sites of the model (guide values replayed, enumerated sites enumerated) and of the guide.

        With validation on, from :meth:`_traces` (Pyro's traces, checked against each other); otherwise recorded by
        :class:`_Sites`, which does what ``poutine.trace(poutine.replay(...))`` does for sample sites without
        building traces.
        """
        if is_validation_enabled():
            model_trace, guide_trace = self._traces(model, guide, args, kwargs)
            return model_trace.nodes, guide_trace.nodes
        with _Sites() as guide_sites:
            guide(*args, **kwargs)
        with _Sites(replay=guide_sites.sites, first_enum_dim=-1 - self.max_plate_nesting) as model_sites:
            model(*args, **kwargs)
        return model_sites.sites, guide_sites.sites

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """The negative ELBO, differentiable in the parameters of model and guide."""
        model_sites, guide_sites = self._sites(model, guide, args, kwargs)
        elbo = _ScaledSum()
        enumerated_terms, enumerated_plates, enumerated_scale = [], [], None
        for name, site in model_sites.items():
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
        for name, site in guide_sites.items():
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


class _Sites(Messenger):
    """Records the sample sites of one run (Pyro's messages themselves, keyed by name); replays a guide's values.

    ``replay``: sites recorded from the guide; a latent site of the same name takes the guide's value (and ``infer``
    dict), as under ``poutine.replay``. ``first_enum_dim``: a latent site marked ``enumerate="parallel"`` that the
    guide does not cover takes its whole support, along its own dimension from ``first_enum_dim`` leftwards (one
    per enumerated site, in order), as under ``poutine.enum`` for sites without ``pyro.markov`` dependencies.
    """

    def __init__(self, replay: dict | None = None, first_enum_dim: int | None = None) -> None:
        super().__init__()
        self.sites: dict = {}
        self._replay = replay
        self._next_enum_dim = first_enum_dim

    def _pyro_sample(self, msg) -> None:
        if self._replay is None or msg["is_observed"]:
            return
        guide_msg = self._replay.get(msg["name"])
        if guide_msg is not None:
            if guide_msg["is_observed"]:
                raise RuntimeError(f"Site {msg['name']!r} must be sampled in the guide.")
            msg["done"] = True
            msg["value"] = guide_msg["value"]
            msg["infer"] = guide_msg["infer"]
        elif self._next_enum_dim is not None and msg["infer"].get("enumerate") is not None:
            self._enumerate(msg)

    def _enumerate(self, msg) -> None:
        fn = msg["fn"]
        if msg["infer"]["enumerate"] != "parallel" or not isinstance(fn, TorchDistributionMixin) or fn.event_dim:
            raise NotImplementedError(f"Site {msg['name']!r}: only parallel enumeration of scalar sites is supported.")
        values = fn.enumerate_support(expand=False)  # (n,) + (1,) * len(batch_shape)
        support_tag = getattr(values, "_pyro_categorical_support", None)
        dim, self._next_enum_dim = self._next_enum_dim, self._next_enum_dim - 1
        values = values.reshape(values.shape[:1] + (1,) * (-1 - dim))  # the support along dim
        if support_tag is not None:  # reshape drops the tag that MarkedBernoulli / Categorical read
            values._pyro_categorical_support = support_tag
        msg["value"], msg["done"] = values, True
        msg["infer"] = {**msg["infer"], "_enumerate_dim": dim}

    def _pyro_post_sample(self, msg) -> None:
        if msg["name"] in self.sites:
            raise RuntimeError(f"Multiple sample sites named {msg['name']!r}.")
        self.sites[msg["name"]] = msg


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
        if isinstance(scale, torch.Tensor) and scale.dim() > 0:  # per-row weights (a subsampled targets plate)
            log_p, scale = log_p * scale, 1.0
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
