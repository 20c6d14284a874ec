"""The training step over the minibatch's targets estimates the same ELBO as the every-target step, and trains to
the same place."""

import anndata as ad
import numpy as np
import pyro
import pytest
import scipy.sparse as sp
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO
from pyro.poutine.messenger import Messenger

import pertpyro
from pertpyro._settings import local_params
from pertpyro.data._loader import make_loader, program_args
from pertpyro.inference._lightning import SVIModule
from pertpyro.module._program import MAX_PLATE_NESTING
from pertpyro.module._targets import inclusion_probability, present_targets
from pertpyro.module.sites import EFFECT, EFFECT_MASK, EFFICACY_RATE, Z_BASAL

N_TARGETS, CELLS_PER_TARGET, N_CONTROLS, N_GENES = 30, 12, 200, 40


@pytest.fixture
def rare_targets():
    return rare_targets_screen()


def rare_targets_screen():
    """A screen of many rare targets: 30 targets x 12 cells, 200 controls, 40 genes; each target moves 3 genes."""
    rng = np.random.default_rng(1)
    labels = np.array(["control"] * N_CONTROLS + [f"T{t}" for t in range(N_TARGETS) for _ in range(CELLS_PER_TARGET)])
    n = len(labels)
    log_base = rng.normal(1.0, 0.7, size=N_GENES)
    truth = np.zeros((N_TARGETS, N_GENES))
    for t in range(N_TARGETS):
        truth[t, rng.choice(N_GENES, 3, replace=False)] = rng.choice([-1.5, 1.5], 3)
    log_mean = np.tile(log_base, (n, 1))
    for t in range(N_TARGETS):
        log_mean[labels == f"T{t}"] += truth[t]
    counts = rng.poisson(np.exp(log_mean) * rng.lognormal(0, 0.2, size=(n, 1))).astype(np.float32)
    counts[:, 0] += 1
    adata = ad.AnnData(sp.csr_matrix(counts))
    adata.obs_names = [f"c{i}" for i in range(n)]
    adata.var_names = [f"g{j}" for j in range(N_GENES)]
    adata.obs["perturbation"] = labels
    pertpyro.setup_anndata(adata)
    adata.uns["truth"] = truth
    return adata


def test_inclusion_probability_is_the_loaders(rare_targets):
    """The frequency with which the training loader's minibatches hold a target is the hypergeometric probability."""
    model = pertpyro.PerturbationModel(rare_targets, latent_dim=2, n_hidden=8)
    data, batch_size = model.cell_data, 32
    n = len(data)
    held, batches = np.zeros(N_TARGETS), 0
    for seed in range(40):
        for batch in make_loader(data, batch_size=batch_size, shuffle=True, seed=seed):
            if batch["idx"].shape[0] == batch_size:
                held += batch["perturbation"].any(0).numpy()
                batches += 1
    expected = inclusion_probability(torch.from_numpy(data.target_cells()), n, batch_size).numpy()
    assert 0.3 < expected[0] < 0.6  # rare enough that most minibatches miss most targets
    np.testing.assert_allclose(held / batches, expected, atol=4 * np.sqrt(0.25 / batches))
    # by hand: a minibatch of 32 of 560 cells misses a target of 12 cells with probability C(548, 32) / C(560, 32)
    miss = np.prod([(n - CELLS_PER_TARGET - i) / (n - i) for i in range(batch_size)])
    assert expected[0] == pytest.approx(1 - miss, rel=1e-9)


class _Fixed(Messenger):
    """Sets the global sites and ``z_basal`` to fixed draws (rows of the present targets, the minibatch's cells)."""

    def __init__(self, values, rows, cells):
        super().__init__()
        self.values, self.rows, self.cells = values, rows, cells

    def _pyro_sample(self, msg):
        value = self.values.get(msg["name"])
        if value is None:
            return
        if msg["name"] == Z_BASAL:
            value = value[self.cells]
        elif self.rows is not None:
            value = value[self.rows]
        msg["value"], msg["done"] = value, True


def test_sparse_step_is_an_unbiased_estimate_of_the_dense_loss(rare_targets):
    """With every random draw fixed, the sparse loss of a minibatch is the dense one plus
    ``sum_t (w_t 1[t in batch] - 1) g_t`` over the targets' global terms ``g_t``, whose mean over minibatches is 0."""
    model = pertpyro.PerturbationModel(rare_targets, latent_dim=2, n_hidden=8, sparse_effects=True)
    program, guide = model.program, model.guide
    with torch.no_grad():
        guide.effect_loc.normal_(0.0, 0.5)
        guide.efficacy_loc.normal_(0.0, 1.0)
    n = len(model.cell_data)
    target_cells = torch.from_numpy(model.cell_data.target_cells()).float()
    module = SVIModule(program, guide, n_train=n, n_val=n, lr=1e-3, target_cells=target_cells, sparse_targets=True)
    with torch.no_grad(), local_params():
        values = {
            EFFECT: torch.distributions.Normal(guide.effect_loc, guide.effect_scale()).sample(),
            # soft relaxed values (the straight-through hard ones cannot be indexed with their density)
            EFFECT_MASK: torch.distributions.RelaxedBernoulli(guide.mask_temperature, logits=guide.mask_logit).sample(),
            EFFICACY_RATE: guide.efficacy_distribution().sample(),
            Z_BASAL: torch.randn(n, program.latent_dim),
        }
        # g_t: log p - log q of each target's global sites at the fixed values
        full = model.cell_data[np.arange(n)]
        args = (full["counts"], full["perturbation"], full["batch_index"], full["library"], full["idx"], n)
        fixed_guide = _Fixed(values, None, full["idx"])(guide)
        guide_trace = poutine.trace(fixed_guide).get_trace(*args)
        model_trace = poutine.trace(poutine.replay(program, trace=guide_trace)).get_trace(*args)
        g = torch.zeros(N_TARGETS)
        for name in (EFFECT, EFFECT_MASK, EFFICACY_RATE):
            term = model_trace.nodes[name]["fn"].log_prob(values[name]) - guide_trace.nodes[name]["fn"].log_prob(
                values[name]
            )
            g += term.sum(-1)

    def losses(batch):
        targets = present_targets(batch["perturbation"], target_cells, n)
        with torch.no_grad(), local_params(), pyro.validation_enabled(False):
            dense_guide = _Fixed(values, None, batch["idx"])(guide)
            sparse_guide = _Fixed(values, targets.rows, batch["idx"])(guide)
            dense = module.elbo.differentiable_loss(program, dense_guide, *program_args(batch, n)) / n
            sparse_args = program_args(batch, n, targets=targets)
            sparse = module.elbo.differentiable_loss(program, sparse_guide, *sparse_args) / n
        return float(dense), float(sparse), targets.rows

    differences = []
    for seed in range(5):
        for batch in make_loader(model.cell_data, batch_size=32, shuffle=True, seed=seed):
            dense, sparse, index = losses(batch)
            weight = 1.0 / inclusion_probability(target_cells[index], n, batch["idx"].shape[0]).float()
            held = torch.zeros(N_TARGETS)
            held[index] = weight
            predicted = -float(((held - 1.0) * g).sum()) / n
            assert sparse - dense == pytest.approx(predicted, abs=2e-3 * abs(dense) + 1e-4)
            differences.append(sparse - dense)
    differences = np.asarray(differences)
    # unbiased: the mean difference vanishes within its standard error (it is far from 0 on a single minibatch)
    assert abs(differences.mean()) < 3 * differences.std() / np.sqrt(len(differences))
    assert differences.std() > 0.1 * abs(float(g.sum())) / n


def test_sparse_step_updates_only_the_present_targets(rare_targets):
    model = pertpyro.PerturbationModel(rare_targets, latent_dim=2, n_hidden=8)
    n = len(model.cell_data)
    target_cells = torch.from_numpy(model.cell_data.target_cells()).float()
    module = SVIModule(
        model.program, model.guide, n_train=n, n_val=n, lr=1e-2, target_cells=target_cells, sparse_targets=True
    )
    dense_optimizer, sparse_optimizer = module.configure_optimizers()
    assert isinstance(sparse_optimizer, torch.optim.SparseAdam)
    batch = next(iter(make_loader(model.cell_data, batch_size=32, shuffle=True, seed=0)))
    before = model.guide.effect_loc.detach().clone()
    with pyro.validation_enabled(False):
        loss = module._loss(batch, n, sparse=True)
    loss.backward()
    assert model.guide.effect_loc.grad.is_sparse
    dense_optimizer.step()
    sparse_optimizer.step()
    present = batch["perturbation"].any(0)
    changed = (model.guide.effect_loc.detach() != before).any(1)
    assert 0 < int(present.sum()) < N_TARGETS
    assert torch.equal(changed, present)  # every present row moved, no absent one
    moments = sparse_optimizer.state[model.guide.effect_loc]["exp_avg"]
    assert torch.equal((moments != 0).any(1), present)  # lazy Adam: absent rows' moments untouched


def test_sparse_training_reaches_the_dense_fixed_point(rare_targets):
    """Trained with either step, the posterior effects agree with each other and recover the simulated truth."""
    fits = {}
    for sparse in (False, True):
        model = pertpyro.PerturbationModel(rare_targets, latent_dim=2, n_hidden=16)
        history = model.train(
            max_epochs=30,
            batch_size=32,
            lr=2e-2,
            early_stopping=False,
            progress_bar=False,
            seed=0,
            sparse_targets=sparse,
        )
        fits[sparse] = (model.guide.effect_loc.detach().numpy(), float(history["val_loss"].tail(3).mean()))
    order = [int(name[1:]) for name in model.registry.targets]  # registry order: T0, T1, T10, ...
    truth = rare_targets.uns["truth"][order]
    (dense, dense_loss), (sparse, sparse_loss) = fits[False], fits[True]
    hits = truth != 0
    assert np.corrcoef(sparse.ravel(), dense.ravel())[0, 1] > 0.98
    assert np.abs(sparse - dense).mean() < 0.05 * np.abs(dense[hits]).mean()
    for effect in (dense, sparse):
        assert np.corrcoef(effect[hits], truth[hits])[0, 1] > 0.9
        assert np.abs(effect[~hits]).mean() < 0.1 * np.abs(effect[hits]).mean()
    assert sparse_loss == pytest.approx(dense_loss, rel=5e-3)


@pytest.mark.parametrize(
    "options",
    [{}, {"efficacy": False}, {"sparse_effects": True}, {"artifacts": "latent"}, {"efficacy": ["T1", "T2"]}],
    ids=str,
)
def test_sparse_step_matches_trace_enum_on_the_same_rows(rare_targets, options):
    """The training step over the minibatch's targets is TraceEnum_ELBO's loss of the same program run, gradients too
    (the per-row weights of the subsampled targets plate included)."""
    rare_targets.obs["artifact"] = np.arange(rare_targets.n_obs) % 9 == 0
    model = pertpyro.PerturbationModel(rare_targets, latent_dim=2, n_hidden=8, **options)
    with torch.no_grad():
        model.guide.effect_loc.normal_(0.0, 1.0)
    n = len(model.cell_data)
    target_cells = torch.from_numpy(model.cell_data.target_cells()).float()
    module = SVIModule(
        model.program, model.guide, n_train=n, n_val=n, lr=1e-3, target_cells=target_cells, sparse_targets=True
    )
    batch = next(iter(make_loader(model.cell_data, batch_size=32, shuffle=True, seed=0)))
    targets = present_targets(batch["perturbation"], target_cells, n)
    args = program_args(batch, n, targets=targets)
    params = [p for m in (model.program, model.guide) for p in m.parameters()]
    trace_enum = TraceEnum_ELBO(max_plate_nesting=MAX_PLATE_NESTING, strict_enumeration_warning=False)

    def loss_and_grads(loss_fn):
        pyro.set_rng_seed(3)
        loss = loss_fn()
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        return loss, [torch.zeros_like(p) if g is None else g.to_dense() for p, g in zip(params, grads, strict=True)]

    def reference():
        with local_params(), pyro.validation_enabled(True):
            return trace_enum.differentiable_loss(model.program, model.guide, *args) / n

    expected, expected_grads = loss_and_grads(reference)
    fast, fast_grads = loss_and_grads(lambda: module._loss(batch, n, sparse=True))
    torch.testing.assert_close(fast, expected)
    for a, b in zip(fast_grads, expected_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert model.guide.effect_loc.grad is None  # autograd.grad: nothing accumulated
