"""Posterior uncertainty: interval calibration on the simulator, exceedance probabilities and Bayesian FDR hit
calls, the ArviZ export, and a user's own ``Predictive`` / ``poutine.do`` script."""

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine

import pertpyro
from pertpyro.causal import bayesian_fdr_calls, exceedance_table
from pertpyro.data._loader import CellData, standalone_args
from pertpyro.datasets import truth_shift_frame
from pertpyro.evaluation import calibration_report
from pertpyro.module import sites
from pertpyro.posterior import IntervalCalibration, fit_interval_calibration, import_arviz, interval_coverage


@pytest.fixture(scope="module")
def fitted():
    pertpyro.set_seed(0)
    adata = pertpyro.datasets.simulate(
        n_cells=2000, n_genes=60, n_targets=6, n_combinations=1, seed=3, n_truth_cells=3000
    )
    pertpyro.setup_anndata(adata, batch_key="batch")
    model = pertpyro.PerturbationModel(adata, latent_dim=5, seed=0)
    model.train(max_epochs=50, batch_size=256, lr=1e-2, seed=0, progress_bar=False, patience=10)
    truth = truth_shift_frame(adata)
    draws = model.ate_draws(list(truth.index), n_samples=40, max_cells=400, seed=0)
    return adata, model, truth, draws


# ------------------------------------------------------------------ calibration
@pytest.mark.slow
def test_interval_coverage_of_true_shifts(fitted):
    """The 90% intervals of model.ate cover most true shifts; collapsed intervals would not."""
    _, _, truth, draws = fitted
    table = interval_coverage(draws, truth.to_numpy()).set_index("level")
    # measured 0.66 at 90% and 0.30 at 50% on this fixture: the raw posterior is over-confident (the draws carry
    # no Monte-Carlo noise, so their spread is the mean-field posterior's). The band pins the honest numbers: it
    # fails if the raw intervals get wider or narrower; test_replica_calibration_* fixes the coverage
    assert 0.55 <= table.loc[0.9, "coverage"] <= 0.75, table
    assert 0.25 <= table.loc[0.5, "coverage"] <= 0.42, table
    assert table["coverage"].is_monotonic_increasing
    # the same check fails for intervals a tenth as wide (it can fail)
    narrow = interval_coverage(draws, truth.to_numpy(), calibration=IntervalCalibration(scale=0.1))
    assert narrow.set_index("level").loc[0.9, "coverage"] < 0.3


def test_ate_draws_carry_posterior_not_monte_carlo_noise(fitted):
    """With the posterior collapsed to a point the ATE draws barely move (measured median sd 0.004 against 0.036
    with the posterior; before the coupled engine: 0.049 against 0.063 on the benchmark screen), and the
    uncertainty of the response rates (site ``efficacy_rate``) moves the knockout's own-gene shift."""
    _, model, truth, draws = fitted
    label = list(truth.index)[:1]
    scales = {name: p.detach().clone() for name, p in model.guide.named_parameters() if "raw_scale" in name}
    try:
        with torch.no_grad():
            model.guide.effect_raw_scale.fill_(-20.0)
            model.guide.efficacy_raw_scale.fill_(-20.0)
        point = model.ate_draws(label, n_samples=10, max_cells=400, seed=0)
        with torch.no_grad():
            model.guide.efficacy_raw_scale.fill_(0.0)  # logit sd ~0.7
        rates = model.ate_draws(label, n_samples=10, max_cells=400, seed=0)
    finally:
        with torch.no_grad():
            for name, p in model.guide.named_parameters():
                if name in scales:
                    p.copy_(scales[name])
    assert np.median(point.std(0)) < 0.01 < 0.02 < np.median(draws.std(0))
    own = list(model.registry.genes).index(label[0])
    assert rates[:, 0, own].std() > max(0.05, 3 * point[:, 0, own].std())


@pytest.mark.slow
def test_replica_calibration_brings_coverage_to_nominal(fitted, tmp_path):
    """model.calibrate() (a refit on a screen simulated from the fit; no truth used) widens the intervals so
    that they cover the true shifts at about the nominal rates: measured 0.30 / 0.66 (50% / 90%) raw, 0.45 /
    0.86 calibrated on this fixture (two replicas). ``ate`` and ``ate_probability`` use it; save/load keep it."""
    adata, model, truth, draws = fitted
    labels = list(truth.index)
    try:
        replica = model.calibrate(labels, n_samples=40, max_cells=400).set_index("level")
        calibration = model.interval_calibration_
        assert calibration.scale > 1.1  # the replica model's posterior is too narrow, as the fitted one's
        assert replica.loc[0.9, "raw"] < 0.8
        assert abs(replica.loc[0.9, "calibrated"] - 0.9) < 0.03
        after = interval_coverage(draws, truth.to_numpy(), calibration=calibration).set_index("level")["coverage"]
        assert 0.84 <= after.loc[0.9] <= 0.96, after
        assert 0.40 <= after.loc[0.5] <= 0.62, after
        kwargs = {"n_samples": 10, "max_cells": 200, "seed": 1}
        wide, raw = model.ate(labels[:1], **kwargs), model.ate(labels[:1], calibrated=False, **kwargs)
        np.testing.assert_allclose(wide["mean"], raw["mean"])
        assert ((wide["upper"] - wide["lower"]) > (raw["upper"] - raw["lower"])).mean() > 0.95
        prob = model.ate_probability(labels[:1], threshold=0.1, **kwargs)["probability"].to_numpy()
        prob_raw = model.ate_probability(labels[:1], threshold=0.1, calibration=False, **kwargs)["probability"]
        assert not np.allclose(prob, prob_raw.to_numpy())
        model.save(tmp_path / "m")
        loaded = pertpyro.PerturbationModel.load(tmp_path / "m", adata)
        assert loaded.interval_calibration_ == calibration
    finally:
        model.interval_calibration_ = None  # the other tests score the raw posterior


def test_ate_draws_match_ate(fitted):
    _, model, truth, _ = fitted
    labels = list(truth.index)[:2]
    draws = model.ate_draws(labels, n_samples=8, max_cells=200, seed=4)
    table = model.ate(labels, n_samples=8, max_cells=200, seed=4, ci=0.8)
    np.testing.assert_allclose(draws.mean(0).ravel(), table["mean"].to_numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.quantile(draws, 0.1, axis=0).ravel(), table["lower"], rtol=1e-5, atol=1e-6)


def test_fit_interval_calibration_recovers_known_miscalibration():
    """Draws twice too narrow, plus an error proportional to the effect: both terms are recovered."""
    rng = np.random.default_rng(0)
    mean = rng.normal(0, 1, size=(10, 400))
    draws = mean + 0.5 * rng.normal(size=(400, 10, 400))  # posterior sd 0.5
    truth = mean + rng.normal(size=mean.shape) * np.sqrt(1.0**2 + (0.3 * mean) ** 2)  # true error sd 1 and 30%
    fitted = fit_interval_calibration(draws, truth)
    assert fitted.scale == pytest.approx(2.0, abs=0.25)
    assert fitted.relative == pytest.approx(0.3, abs=0.1)
    before = interval_coverage(draws, truth).set_index("level")["coverage"]
    after = interval_coverage(draws, truth, calibration=fitted).set_index("level")["coverage"]
    assert before.loc[0.9] < 0.7
    assert after.loc[0.9] == pytest.approx(0.9, abs=0.02)
    assert after.loc[0.5] == pytest.approx(0.5, abs=0.03)
    # a noisy reference: its known noise is not blamed on the model
    noisy = truth + rng.normal(size=truth.shape) * 0.8
    refit = fit_interval_calibration(draws, noisy, reference_se=0.8)
    assert refit.scale == pytest.approx(2.0, abs=0.35)


def test_calibration_report_scores_truth_and_heldout_cells(fitted):
    adata, model, _, _ = fitted
    report = calibration_report(model, adata, adata[:600].copy(), n_samples=6)
    assert list(report["reference"].unique()) == ["truth", "heldout"]
    assert report["coverage"].between(0, 1).all()
    assert report.groupby("reference").size().to_dict() == {"truth": 4, "heldout": 4}
    assert report["level"].tolist() == [0.5, 0.8, 0.9, 0.95] * 2


# ------------------------------------------------------------------ probabilities and FDR
def test_bayesian_fdr_calls_control_the_realised_fdr():
    rng = np.random.default_rng(1)
    prob = rng.beta(0.3, 0.3, size=20000)
    real = rng.random(prob.size) < prob  # probabilities calibrated by construction
    for rule in ("local", "set"):
        called, qvalue = bayesian_fdr_calls(prob, 0.05, rule=rule)
        assert called.sum() > 1000
        assert np.mean(~real[called]) <= 0.06
        assert np.mean(1 - prob[called]) <= 0.05
        assert qvalue[called].max() <= 0.05
    assert 0.05 < qvalue[~called].min()  # the set rule calls the largest such set
    with pytest.raises(ValueError, match="fdr"):
        bayesian_fdr_calls(prob, 1.5)


def test_ate_probability_and_hits_on_the_simulator(fitted):
    _, model, truth, draws = fitted
    labels = list(truth.index)
    threshold = 0.2
    small = model.ate_probability(labels[:2], threshold=threshold, n_samples=5, max_cells=400, seed=1, fdr=0.1)
    assert {"perturbation", "gene", "mean", "probability", "hit", "lfdr_set"} <= set(small.columns)
    # the draws of ate_draws with the same seed
    same = model.ate_draws(labels[:2], n_samples=5, max_cells=400, seed=1)
    np.testing.assert_allclose(small["probability"], (np.abs(same) > threshold).mean(0).ravel())
    # the fixture's draws are those of ate_probability(labels, n_samples=40, max_cells=400, seed=0)
    table = exceedance_table(draws, labels, model.registry.genes, threshold=threshold, fdr=0.1, rule="set")
    real = np.abs(truth.to_numpy().ravel()) > threshold
    hit = table["hit"].to_numpy()
    assert real.sum() >= 10
    assert hit.sum() >= 0.5 * real.sum()  # power: most real effects are called
    # target 0.1, measured 0.27-0.30 on this fixture from the raw posterior (not controlled)
    assert np.mean(~real[hit]) <= 0.4
    # ordering: real effects get higher probabilities than null ones (AUROC)
    p = table["probability"].to_numpy()
    auroc = (p[real][:, None] > p[~real][None, :]).mean() + 0.5 * (p[real][:, None] == p[~real][None, :]).mean()
    assert auroc > 0.9
    with pytest.raises(ValueError, match="threshold"):
        model.ate_probability(["G0000"], threshold=-1.0, n_samples=2)


def test_recalibration_transfers_across_genes(fitted):
    """Fitted on the truth of half of the genes, the recalibrated intervals cover the other half at about the
    nominal rates, and hits called from the recalibrated probabilities keep their FDR."""
    _, model, truth, draws = fitted
    values = truth.to_numpy()
    fit_half = np.arange(values.shape[1]) % 2 == 0
    calibration = fit_interval_calibration(draws[:, :, fit_half], values[:, fit_half])
    after = interval_coverage(draws[:, :, ~fit_half], values[:, ~fit_half], calibration=calibration)
    after = after.set_index("level")["coverage"]
    assert 0.35 <= after.loc[0.5] <= 0.65, after  # measured 0.51
    assert 0.8 <= after.loc[0.9] <= 0.97, after  # measured 0.87 (raw: 0.59)
    genes = np.asarray(model.registry.genes)[~fit_half]
    calls = exceedance_table(
        draws[:, :, ~fit_half], list(truth.index), genes, threshold=0.2, fdr=0.1, calibration=calibration, rule="set"
    )
    real = np.abs(values[:, ~fit_half].ravel()) > 0.2
    hit = calls["hit"].to_numpy()
    assert hit.sum() >= 0.5 * real.sum()
    assert np.mean(~real[hit]) <= 0.2  # target 0.1, measured 0.07


# ------------------------------------------------------------------ ArviZ
def test_inference_data_dims_coords_and_summary(fitted):
    adata, model, truth, _ = fitted
    az = import_arviz()
    heldout = adata[:300].copy()
    idata = model.to_inference_data(
        n_samples=20, heldout=heldout, ate=list(truth.index)[:2], latent=True, max_cells=300
    )
    post = idata.posterior
    assert post["effect"].dims == ("chain", "draw", "target", "gene")
    assert post["effect"].shape == (2, 10, 6, 60)
    assert list(post["target"].values) == list(model.registry.targets)
    assert list(post["gene"].values) == list(model.registry.genes)
    assert post["z_basal"].dims == ("chain", "draw", "cell", "latent")
    assert list(post["cell"].values) == list(heldout.obs_names)
    assert post["ate"].dims == ("chain", "draw", "perturbation", "gene")
    # draws come from the guide: their mean is the guide's mean
    loc = model.guide.effect_loc.detach().numpy()
    scale = model.guide.effect_scale().detach().numpy()
    assert np.abs(post["effect"].mean(("chain", "draw")).values - loc).max() < 5 * scale.max() / np.sqrt(20) + 1e-6
    np.testing.assert_allclose(
        idata.constant_data["efficacy_rate"].values, model.efficacy_probability().to_numpy(), rtol=1e-6
    )
    summary = az.summary(idata, var_names=["effect"], coords={"target": ["G0000"]})
    assert len(summary) == 60
    assert np.isfinite(summary["r_hat"]).all()
    assert 0.95 <= summary["r_hat"].median() <= 1.1  # independent draws: R-hat about 1 (noisy with 2 x 10 draws)
    # posterior predictive check: replicated per-gene means are close to the observed ones
    rep = idata.posterior_predictive["gene_mean"].mean(("chain", "draw")).values
    obs = idata.observed_data["gene_mean"].values
    assert np.corrcoef(rep, obs)[0, 1] > 0.99
    fig = pertpyro.plotting.ppc(idata)
    assert len(fig.axes) == 2
    with pytest.raises(ValueError, match="posterior predictive"):
        pertpyro.plotting.ppc(model.to_inference_data(n_samples=4))


# ------------------------------------------------------------------ user scripts
def test_user_predictive_with_poutine_do(fitted):
    """A user's own script: Predictive over poutine.do(model, perturbation=...), with the public site names."""
    adata, model, truth, draws = fitted
    target = "G0000"  # the simulator's target t knocks down its own gene t
    control_cells = adata[adata.obs["perturbation"] == "control"].copy()
    args = standalone_args(CellData(control_cells, model.registry)[np.arange(control_cells.n_obs)])
    design = torch.zeros_like(args.perturbation)
    design[:, model.registry.targets.index(target)] = 1.0

    def simulate(counts, *rest, do_design):
        return poutine.do(model.program, data={sites.PERTURBATION: do_design})(None, *rest)

    means = {}
    with pertpyro.local_params(), torch.no_grad():
        for name, value in (("control", torch.zeros_like(design)), (target, design)):
            pyro.set_rng_seed(0)
            predictive = pyro.infer.Predictive(
                lambda counts, *rest, v=value: simulate(counts, *rest, do_design=v),
                guide=model.guide,
                num_samples=10,
                return_sites=(sites.COUNTS, sites.EFFECT),
            )
            out = predictive(*args)
            x = out[sites.COUNTS]
            assert x.shape[0] == 10
            assert x.shape[-2:] == (control_cells.n_obs, 60)
            x = x.reshape(10, control_cells.n_obs, 60)
            means[name] = torch.log1p(1e4 * x / x.sum(-1, keepdim=True)).mean((0, 1)).numpy()
    shift = means[target] - means["control"]
    # the user's script reproduces model.ate's answer (same model, same intervention), which tracks the truth
    model_mean = draws.mean(0)[list(truth.index).index(target)]
    assert shift[0] == pytest.approx(model_mean[0], abs=0.1)
    assert np.corrcoef(shift, model_mean)[0, 1] > 0.95
    assert truth.loc[target, target] < -0.3
    assert np.corrcoef(shift, truth.loc[target].to_numpy())[0, 1] > 0.8
