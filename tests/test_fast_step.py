"""The training step's shortcuts around Pyro's machinery leave its loss and gradients unchanged."""

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO

import pertpyro
from pertpyro._settings import local_params
from pertpyro.data._loader import CellData, make_loader, program_args
from pertpyro.inference import CellEnumELBO
from pertpyro.inference._direct import direct_attributes
from pertpyro.inference._lightning import SVIModule
from pertpyro.module._program import MAX_PLATE_NESTING


def _model_and_batch(adata, **options):
    model = pertpyro.PerturbationModel(adata, latent_dim=3, n_hidden=16, **options)
    with torch.no_grad():
        model.guide.effect_loc.normal_(0.0, 1.0)  # the efficacy arms differ
        model.program.library_effect.normal_(0.0, 0.3)
    data = CellData(adata, model.registry, **model._artifact_data_kwargs())
    batch = next(iter(make_loader(data, batch_size=64, shuffle=True, seed=0)))
    return model, batch, len(data)


def _loss_and_grads(loss_fn, model):
    params = [p for m in (model.program, model.guide) for p in m.parameters()]
    pyro.set_rng_seed(3)
    loss = loss_fn()
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return loss, [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]


def _param_sites(model, args):
    with local_params():
        trace = poutine.trace(model.guide).get_trace(*args)
    return [name for name, site in trace.nodes.items() if site["type"] == "param"]


def test_direct_attributes_same_loss_and_gradients_no_param_statements(tiny_adata):
    model, batch, n = _model_and_batch(tiny_adata)
    args = program_args(batch, n)
    elbo = SVIModule(model.program, model.guide, n_train=n, n_val=n, lr=1e-3).elbo

    def loss():
        with local_params():
            return elbo.differentiable_loss(model.program, model.guide, *args)

    reference, reference_grads = _loss_and_grads(loss, model)
    with direct_attributes(model.program, model.guide):
        direct, direct_grads = _loss_and_grads(loss, model)
        assert _param_sites(model, args) == []  # the encoder's weights are read without pyro.param statements
    assert torch.equal(direct, reference)
    for a, b in zip(direct_grads, reference_grads, strict=True):
        assert torch.equal(a, b)
    # outside the block the modules are as before: pyro.param statements for the encoder's weights again
    assert "encoder.net.0.weight" in _param_sites(model, args)
    assert all("weight" not in m.__dict__ for m in model.guide.modules())


def test_direct_attributes_nests_and_cleans_up_after_an_error(tiny_adata):
    model, _, _ = _model_and_batch(tiny_adata)
    decoder_linear = model.program.decoder.net[0]

    def failing_step():
        with direct_attributes(model.program):
            assert decoder_linear.__dict__["weight"] is decoder_linear._parameters["weight"]
            with direct_attributes(model.program, model.guide, lambda: None):  # plain functions are left alone
                pass
            assert "weight" in decoder_linear.__dict__  # the inner block left the outer one's entries
            raise RuntimeError("inside")

    with pytest.raises(RuntimeError, match="inside"):
        failing_step()
    assert not any(name in m.__dict__ for m in model.program.modules() for name in m._parameters)
    assert not any(name in m.__dict__ for m in model.program.modules() for name in m._buffers)


@pytest.mark.parametrize(
    "options", [{}, {"efficacy": False}, {"artifacts": "observed"}, {"artifacts": "latent"}, {"grn": True}], ids=str
)
def test_training_step_matches_trace_enum(tiny_adata, options):
    """The training loss (no validation: recorded sites, direct attributes) is TraceEnum_ELBO's, gradients too."""
    tiny_adata.obs["artifact"] = np.arange(tiny_adata.n_obs) % 7 == 0
    model, batch, n = _model_and_batch(tiny_adata, **options)
    module = SVIModule(model.program, model.guide, n_train=n, n_val=n, lr=1e-3)
    args = program_args(batch, n)
    trace_enum = TraceEnum_ELBO(max_plate_nesting=MAX_PLATE_NESTING, strict_enumeration_warning=False)

    def reference():
        with local_params(), pyro.validation_enabled(False):
            return trace_enum.differentiable_loss(model.program, model.guide, *args) / n

    def validated():  # CellEnumELBO on Pyro's traces (checked against each other)
        with local_params(), pyro.validation_enabled(True):
            return module.elbo.differentiable_loss(model.program, model.guide, *args) / n

    expected, expected_grads = _loss_and_grads(reference, model)
    checked, checked_grads = _loss_and_grads(validated, model)
    fast, fast_grads = _loss_and_grads(lambda: module._loss(batch, n), model)
    assert isinstance(module.elbo, CellEnumELBO)  # no fallback
    torch.testing.assert_close(fast, expected)
    for a, b in zip(fast_grads, expected_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert torch.equal(fast, checked)  # the recorded sites give the traces' numbers exactly
    for a, b in zip(fast_grads, checked_grads, strict=True):
        assert torch.equal(a, b)
