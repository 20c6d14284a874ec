"""``CellEnumELBO`` (the training loss) equals Pyro's ``TraceEnum_ELBO`` in value and gradients, and refuses
the programs where its shortcut would be wrong."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, TraceEnum_ELBO
from pyro.optim import Adam

import pertpyro
from pertpyro._settings import local_params
from pertpyro.data._loader import CellData, make_loader, program_args
from pertpyro.inference import CellEnumELBO
from pertpyro.module._program import MAX_PLATE_NESTING


def _loss_and_grads(elbo, model, args):
    pyro.set_rng_seed(7)
    params = [p for m in (model.program, model.guide) for p in m.parameters()]
    with local_params():
        loss = elbo.differentiable_loss(model.program, model.guide, *args)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return loss, [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]


@pytest.mark.parametrize("options", [{}, {"sparse_effects": True}, {"efficacy": False}, {"effect_df": 0.0}], ids=str)
def test_same_value_and_gradients_as_trace_enum(tiny_adata, options):
    model = pertpyro.PerturbationModel(tiny_adata, latent_dim=3, n_hidden=16, **options)
    with torch.no_grad():
        model.guide.effect_loc.normal_(0.0, 1.0)  # arms that differ
        model.guide.efficacy_loc.normal_(0.0, 1.0)
    data = CellData(tiny_adata, model.registry)
    args = program_args(next(iter(make_loader(data, batch_size=64, shuffle=True, seed=0))), len(data))
    trace_enum = TraceEnum_ELBO(max_plate_nesting=MAX_PLATE_NESTING, strict_enumeration_warning=False)
    reference, reference_grads = _loss_and_grads(trace_enum, model, args)
    lean, lean_grads = _loss_and_grads(CellEnumELBO(max_plate_nesting=MAX_PLATE_NESTING), model, args)
    torch.testing.assert_close(lean, reference)
    for a, b in zip(lean_grads, reference_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3)


def test_two_enumerated_cell_sites_are_summed_jointly():
    """Two discrete parents of one observation: the joint sum, not two separate ones."""

    weight = torch.tensor(2.0, requires_grad=True)

    def model(x):
        with pyro.plate("cells", x.shape[0], dim=-1):
            a = pyro.sample("a", dist.Bernoulli(0.3), infer={"enumerate": "parallel"})
            b = pyro.sample("b", dist.Bernoulli(0.6), infer={"enumerate": "parallel"})
            pyro.sample("x", dist.Normal(weight * a - b, 1.0), obs=x)

    def guide(x):
        pass

    x = torch.tensor([0.5, -1.0, 2.0])
    reference = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(model, guide, x)
    torch.testing.assert_close(CellEnumELBO(max_plate_nesting=1).differentiable_loss(model, guide, x), reference)


def test_refuses_global_enumeration_and_score_function_guides():
    def global_discrete(x):
        c = pyro.sample("c", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})
        with pyro.plate("cells", x.shape[0], dim=-1):
            pyro.sample("x", dist.Normal(c, 1.0), obs=x)

    x = torch.zeros(3)
    with pytest.raises(NotImplementedError, match="outside a shared plate"):
        CellEnumELBO(max_plate_nesting=1).differentiable_loss(global_discrete, lambda x: None, x)

    def per_gene_factor(x):  # a per-cell discrete site with a factor in a further (genes) plate
        with pyro.plate("cells", 3, dim=-1):
            c = pyro.sample("c", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})
            with pyro.plate("genes", 2, dim=-2):
                pyro.sample("x", dist.Normal(c, 1.0), obs=torch.zeros(2, 3))

    with pytest.raises(NotImplementedError, match="further plates"):
        CellEnumELBO(max_plate_nesting=2).differentiable_loss(per_gene_factor, lambda x: None, x)

    def model(x):
        s = pyro.sample("s", dist.Bernoulli(0.5))
        pyro.sample("x", dist.Normal(s, 1.0).expand([3]).to_event(1), obs=x)

    def guide(x):
        pyro.sample("s", dist.Bernoulli(0.4))

    with pytest.raises(NotImplementedError, match="not reparameterised"):
        CellEnumELBO(max_plate_nesting=1).differentiable_loss(model, guide, x)


def test_trains_under_plain_svi(tiny_adata):
    """A user's own ``SVI`` loop (Pyro's global param store) can use it too."""
    model = pertpyro.PerturbationModel(tiny_adata, latent_dim=3, n_hidden=16)
    data = CellData(tiny_adata, model.registry)
    pyro.clear_param_store()
    svi = SVI(model.program, model.guide, Adam({"lr": 1e-2}), CellEnumELBO(max_plate_nesting=MAX_PLATE_NESTING))
    losses = []
    for _ in range(15):
        for batch in make_loader(data, batch_size=120, shuffle=True, seed=0):
            losses.append(svi.step(*program_args(batch, len(data))))
    assert sum(losses[-4:]) < 0.95 * sum(losses[:4])
    assert "effect_loc" in pyro.get_param_store()


def test_training_falls_back_to_trace_enum_outside_the_shortcut():
    """A program with a global discrete site still trains (with TraceEnum_ELBO, same value)."""
    from pyro.infer import TraceEnum_ELBO as Reference

    from pertpyro.inference import SVIModule

    class GlobalSwitch(pyro.nn.PyroModule):
        def __init__(self):
            super().__init__()
            self.loc = torch.nn.Parameter(torch.tensor(0.0))

        def forward(self, counts, perturbation, batch_index, library, idx, n_cells, artifact=None):
            on = pyro.sample("on", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})
            with pyro.plate("cells", n_cells, subsample=idx, dim=-1):
                pyro.sample("x", dist.Normal(self.loc + on, 1.0), obs=library)

    with local_params():  # as PerturbationModel builds its modules
        program = GlobalSwitch()
    module = SVIModule(program, lambda *args: None, n_train=4, n_val=4, lr=1e-2)
    batch = {
        "counts": torch.ones(4, 2),
        "perturbation": torch.zeros(4, 1),
        "batch_index": torch.zeros(4, dtype=torch.long),
        "library": torch.tensor([0.5, 1.0, 1.5, 2.0]),
        "idx": torch.arange(4),
    }
    loss = module._loss(batch, 4)
    assert isinstance(module.elbo, Reference)
    assert torch.isfinite(loss)
    assert loss.requires_grad


def test_shared_scale_student_t_matches_torch_and_stays_unexpanded():
    from pertpyro.module._distributions import SharedScaleStudentT

    torch.manual_seed(0)
    scale = torch.rand(7) + 0.2
    prior = SharedScaleStudentT(4.0, torch.tensor(0.0), scale).expand([3, 7])
    reference = dist.StudentT(torch.tensor(4.0), torch.tensor(0.0), scale).expand([3, 7])
    x = 3.0 * torch.randn(3, 7)
    assert torch.allclose(prior.log_prob(x), reference.log_prob(x), atol=1e-5)
    assert prior.scale.shape == (7,)  # the plates' expansion does not copy the per-gene scale
    draws = prior.expand([4000, 3, 7]).rsample()
    assert draws.shape == (4000, 3, 7)
    assert torch.allclose(draws.var(0), reference.variance, rtol=0.35)  # df 4: variance 2 scale^2, heavy tails
    with pytest.raises(ValueError, match="df must be positive"):
        SharedScaleStudentT(0.0, torch.tensor(0.0), scale)
