"""The training step's shortcuts around Pyro's machinery leave its loss and gradients unchanged."""

import pyro
import pytest
import torch
from pyro import poutine

import pertpyro
from pertpyro._settings import local_params
from pertpyro.data._loader import CellData, make_loader, program_args
from pertpyro.inference._direct import direct_attributes
from pertpyro.inference._lightning import SVIModule


def _model_and_batch(adata, **options):
    model = pertpyro.PerturbationModel(adata, latent_dim=3, n_hidden=16, **options)
    with torch.no_grad():
        model.guide.effect_loc.normal_(0.0, 1.0)  # the efficacy arms differ
        model.program.library_effect.normal_(0.0, 0.3)
    data = CellData(adata, model.registry)
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
