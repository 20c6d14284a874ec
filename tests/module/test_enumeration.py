"""The enumerated ``efficacy`` arms are built by stacking (fast path); they must equal the per-cell select."""

import pyro
import torch
from pyro.infer import TraceEnum_ELBO

import pertpyro
from pertpyro._settings import local_params
from pertpyro.data._loader import CellData, make_loader, program_args
from pertpyro.module import _program
from pertpyro.module._distributions import MarkedBernoulli, is_enumerated_support
from pertpyro.module._program import MAX_PLATE_NESTING


def test_marked_support_survives_enumeration_and_only_there():
    seen = {}

    def model():
        with pyro.plate("cells", 4, dim=-1):
            prior = MarkedBernoulli(torch.full((4,), 0.3))
            seen["enumerated"] = pyro.sample("e", prior, infer={"enumerate": "parallel"})
            seen["sampled"] = pyro.sample("f", MarkedBernoulli(torch.full((4,), 0.3)))

    pyro.poutine.trace(pyro.poutine.enum(model, first_available_dim=-2)).get_trace()
    assert is_enumerated_support(seen["enumerated"])
    assert seen["enumerated"].flatten().tolist() == [0.0, 1.0]
    assert not is_enumerated_support(seen["sampled"])


def test_stacked_arms_equal_the_select(tiny_adata, monkeypatch):
    model = pertpyro.PerturbationModel(tiny_adata, latent_dim=3, n_hidden=16)
    data = CellData(tiny_adata, model.registry)
    batch = next(iter(make_loader(data, batch_size=64, shuffle=True, seed=0)))
    args = program_args(batch, len(data))
    elbo = TraceEnum_ELBO(max_plate_nesting=MAX_PLATE_NESTING)

    def loss() -> torch.Tensor:
        pyro.set_rng_seed(1)
        with local_params():
            return elbo.differentiable_loss(model.program, model.guide, *args)

    # give the effects a value, so the two arms differ
    with torch.no_grad():
        model.guide.effect_loc.normal_(0.0, 1.0)
    stacked = loss()
    monkeypatch.setattr(_program, "is_enumerated_support", lambda value: False)
    selected = loss()
    assert torch.isfinite(stacked)
    torch.testing.assert_close(stacked, selected)
