"""The Pyro program: scaling, parameter isolation, user-written SVI, save/load, interventions."""

import numpy as np
import pandas as pd
import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, TraceEnum_ELBO

import pertpyro
from pertpyro.data._loader import CellData, make_loader, program_args
from pertpyro.module import sites
from pertpyro.module._program import MAX_PLATE_NESTING

FAST = {"max_epochs": 3, "batch_size": 64, "progress_bar": False}


def _first_batch(model, batch_size=64):
    data = CellData(model.adata, model.registry)
    batch = next(iter(make_loader(data, batch_size=batch_size, shuffle=True)))
    return program_args(batch, len(data))


def test_plate_scaling(tiny_adata):
    model = pertpyro.PerturbationModel(tiny_adata, latent_dim=3, sparse_effects=True)
    args = _first_batch(model)
    with pertpyro.local_params():
        guide_trace = poutine.trace(model.guide).get_trace(*args)
        model_trace = poutine.trace(poutine.replay(model.program, trace=guide_trace)).get_trace(*args)
    n, b = tiny_adata.n_obs, args.idx.shape[0]
    for name in (sites.Z_BASAL, sites.COUNTS, sites.PERTURBATION):
        assert model_trace.nodes[name]["scale"] == pytest.approx(n / b)
    for name in sites.GLOBAL_SITES:
        if name in model_trace.nodes:  # the GRN sites exist only with grn=True (tests/module/test_grn.py)
            assert model_trace.nodes[name]["scale"] == 1.0
    assert set(sites.LOCAL_SITES) <= set(model_trace.nodes)


def test_param_store_untouched_and_models_independent(tiny_adata):
    first = pertpyro.PerturbationModel(tiny_adata, latent_dim=3, seed=0)
    before = {k: v.clone() for k, v in first.program.state_dict().items()}
    second = pertpyro.PerturbationModel(tiny_adata, latent_dim=3, seed=1)
    second.train(**FAST)
    assert len(pyro.get_param_store()) == 0
    for k, v in first.program.state_dict().items():
        torch.testing.assert_close(v, before[k])
    # training the second moved its own parameters
    assert not torch.allclose(second.guide.effect_loc, torch.zeros_like(second.guide.effect_loc))


def test_plain_user_svi_loop_trains(tiny_adata):
    """A user's own ``pyro.infer.SVI`` loop (Pyro's default global param store) trains model and guide."""
    model = pertpyro.PerturbationModel(tiny_adata, latent_dim=3)
    data = CellData(tiny_adata, model.registry)
    pyro.clear_param_store()
    svi = SVI(
        model.program, model.guide, pyro.optim.Adam({"lr": 1e-2}), TraceEnum_ELBO(max_plate_nesting=MAX_PLATE_NESTING)
    )
    before = model.guide.effect_loc.detach().clone()
    losses = []
    for _ in range(15):
        for batch in make_loader(data, batch_size=120, shuffle=True):
            losses.append(svi.step(*program_args(batch, len(data))))
    start, end = np.mean(losses[:4]), np.mean(losses[-4:])
    assert end < start - 0.05 * abs(start)
    assert "effect_loc" in pyro.get_param_store()
    assert not torch.allclose(pyro.get_param_store()["effect_loc"], before)


def test_plain_user_elbo_module_loop_in_local_mode(tiny_adata):
    """Pyro's local-parameter pattern: the ELBO as a torch module, optimised with torch.optim."""
    model = pertpyro.PerturbationModel(tiny_adata, latent_dim=3)
    data = CellData(tiny_adata, model.registry)
    with pertpyro.local_params():
        loss_fn = TraceEnum_ELBO(max_plate_nesting=MAX_PLATE_NESTING)(model.program, model.guide)
        optim = torch.optim.Adam(loss_fn.parameters(), lr=1e-2)
        losses = []
        for _ in range(15):
            for batch in make_loader(data, batch_size=120, shuffle=True):
                loss = loss_fn(*program_args(batch, len(data)))
                optim.zero_grad()
                loss.backward()
                optim.step()
                losses.append(loss.item())
    assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.05 * abs(np.mean(losses[:4]))
    assert len(pyro.get_param_store()) == 0


def test_training_is_deterministic_under_seed(tiny_adata):
    a = pertpyro.PerturbationModel(tiny_adata, latent_dim=3, seed=0)
    b = pertpyro.PerturbationModel(tiny_adata, latent_dim=3, seed=0)
    ha, hb = a.train(seed=3, **FAST), b.train(seed=3, **FAST)
    pd.testing.assert_frame_equal(ha, hb)
    pd.testing.assert_frame_equal(a.ate("A", n_samples=3), b.ate("A", n_samples=3))


@pytest.mark.parametrize("sparse_effects", [False, True])
def test_save_load_same_predictions(tiny_adata, tmp_path, sparse_effects):
    model = pertpyro.PerturbationModel(tiny_adata, latent_dim=3, sparse_effects=sparse_effects)
    model.train(**FAST)
    before = model.ate(["A", "A+B"], n_samples=4, seed=2)
    model.save(tmp_path / "run")
    with pytest.raises(FileExistsError):
        model.save(tmp_path / "run")
    loaded = pertpyro.PerturbationModel.load(tmp_path / "run", tiny_adata)
    pd.testing.assert_frame_equal(before, loaded.ate(["A", "A+B"], n_samples=4, seed=2))
    pd.testing.assert_frame_equal(model.history_, loaded.history_)
    np.testing.assert_array_equal(model.get_latent_representation(), loaded.get_latent_representation())


def test_load_rejects_other_genes(tiny_adata, tmp_path):
    model = pertpyro.PerturbationModel(tiny_adata, latent_dim=2)
    model.save(tmp_path / "run")
    other = tiny_adata[:, :20].copy()
    pertpyro.setup_anndata(other, batch_key="batch")
    with pytest.raises(ValueError, match="differ from the saved model"):
        pertpyro.PerturbationModel.load(tmp_path / "run", other)


def test_ate_requires_training_and_known_targets(tiny_adata):
    model = pertpyro.PerturbationModel(tiny_adata, latent_dim=2)
    with pytest.raises(RuntimeError, match="not trained"):
        model.ate("A")
    model.train(**FAST)
    with pytest.raises(ValueError, match="Unknown perturbation target 'Z'"):
        model.ate("Z")
    with pytest.raises(ValueError, match="ci must lie"):
        model.ate("A", ci=1.5)


def test_do_goes_through_poutine_and_control_is_identity(tiny_adata):
    """do(perturbation=control) on control cells reproduces the factual model exactly (same seed)."""
    model = pertpyro.PerturbationModel(tiny_adata, latent_dim=2)
    model.train(**FAST)
    args = _first_batch(model, batch_size=300)
    ctrl = args.perturbation.sum(-1) == 0
    zeros = torch.zeros_like(args.perturbation)
    with pertpyro.local_params():
        guide_trace = poutine.trace(model.guide).get_trace(*args)
        conditioned = poutine.replay(model.program, trace=guide_trace)
        pyro.set_rng_seed(5)
        factual = conditioned(None, *args[1:])
        pyro.set_rng_seed(5)
        tracer = poutine.trace(conditioned)
        poutine.do(tracer, data={sites.PERTURBATION: zeros})(None, *args[1:])
    nodes = tracer.trace.nodes
    assert "perturbation__CF" in nodes  # the intervened value, as poutine.do names it
    torch.testing.assert_close(nodes["perturbation__CF"]["value"], zeros)
    torch.testing.assert_close(nodes[sites.COUNTS]["value"][ctrl], factual[ctrl])
    assert not torch.equal(nodes[sites.COUNTS]["value"][~ctrl], factual[~ctrl])


def test_predictive_with_site_names(tiny_adata):
    model = pertpyro.PerturbationModel(tiny_adata, latent_dim=2)
    model.train(**FAST)
    args = _first_batch(model, batch_size=50)
    with pertpyro.local_params():
        predictive = pyro.infer.Predictive(
            model.program, guide=model.guide, num_samples=4, return_sites=(sites.COUNTS, sites.EFFECT)
        )
        out = predictive(args.counts, *args[1:])
    assert out[sites.EFFECT].shape == (4, 1, 3, 30) or out[sites.EFFECT].shape == (4, 3, 30)
    assert out[sites.COUNTS].shape[-2:] == (50, 30)


def test_batch_weights_match_label_composition(tiny_adata):
    adata = tiny_adata.copy()
    labels = adata.obs["perturbation"].to_numpy()
    adata.obs["batch"] = np.where(labels == "A", "b1", adata.obs["batch"].to_numpy())  # every A cell in batch b1
    pertpyro.setup_anndata(adata, batch_key="batch")
    model = pertpyro.PerturbationModel(adata, latent_dim=2)
    population = model._population(None, None, 0)
    weights = model._batch_weights(["A", "B", "A+C"], population)
    codes = population["batch_index"].numpy()
    b1 = model.registry.batches.index("b1")
    # A lives only in b1: control cells of b2 get weight 0, those of b1 weight 1 / P(b1 among controls)
    np.testing.assert_allclose(weights[0][codes != b1], 0.0)
    np.testing.assert_allclose(weights[0][codes == b1], 1.0 / np.mean(codes == b1))
    # an unseen combination keeps the controls' own composition
    np.testing.assert_allclose(weights[2], 1.0)
    # weighted composition of the A arm equals A's composition
    assert np.isclose(np.average(codes == b1, weights=weights[0]), 1.0)


def test_iwelbo_tightens_with_particles(tiny_adata):
    model = pertpyro.PerturbationModel(tiny_adata, latent_dim=2)
    model.train(**FAST)
    one = model.iwelbo(tiny_adata, n_samples=1, seed=0)
    many = model.iwelbo(tiny_adata, n_samples=30, seed=0)
    # log-mean-exp of importance weights is a tighter bound than the single-sample ELBO (Burda et al. 2016)
    assert np.isfinite(one)
    assert many > one


def test_effect_inclusion_and_latent(tiny_adata):
    model = pertpyro.PerturbationModel(tiny_adata, latent_dim=2, sparse_effects=True)
    model.train(**FAST)
    inclusion = model.effect_inclusion()
    assert inclusion.shape == (3, 30)
    assert list(inclusion.index) == ["A", "B", "C"]
    assert ((inclusion.to_numpy() > 0) & (inclusion.to_numpy() < 1)).all()
    assert model.get_latent_representation().shape == (tiny_adata.n_obs, 2)
    with pytest.raises(ValueError, match="no effect mask"):
        pertpyro.PerturbationModel(tiny_adata, latent_dim=2).effect_inclusion()
