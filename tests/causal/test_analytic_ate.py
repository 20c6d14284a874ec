"""The analytic ATE estimator: the expectation over negative binomial counts, and agreement with the simulation."""

import numpy as np
import pyro
import pytest
import torch

import pertpyro
from pertpyro._settings import local_params, seeded
from pertpyro.causal import _table_draws
from pertpyro.causal._analytic import analytic_label_means, expected_log1p, expected_log_normalised
from pertpyro.causal._ate import draw_quantiles, label_shift_draws
from pertpyro.causal._counterfactual import abduct
from pertpyro.causal._table import Curves, table_label_means
from pertpyro.causal._table_draws import table_mean_draws
from pertpyro.data._simulate import truth_shift_frame
from pertpyro.data._statistics import log_normalise


def _exact(mean: float, theta: float, scale: float, n_terms: int = 200_000) -> float:
    """E[log1p(scale x)] by the sum over the NB probability mass function (float64, far past the mean)."""
    k = torch.arange(n_terms, dtype=torch.float64)
    mean_t, theta_t = torch.tensor(mean, dtype=torch.float64), torch.tensor(theta, dtype=torch.float64)
    log_p = (
        torch.lgamma(k + theta_t)
        - torch.lgamma(theta_t)
        - torch.lgamma(k + 1)
        + theta_t * torch.log(theta_t / (theta_t + mean_t))
        + k * torch.log(mean_t / (theta_t + mean_t))
    )
    return float((log_p.exp() * torch.log1p(scale * k)).sum())


@pytest.mark.parametrize("theta", [0.2, 1.0, 3.0, 100.0])
def test_expected_log1p_matches_the_probability_mass_sum(theta):
    """Low and high means, strong and weak over-dispersion: the quadrature is the exact expectation to ~1e-4."""
    means = [0.001, 0.05, 0.2, 1.0, 4.0, 15.0, 60.0, 500.0, 2000.0]
    for scale in (0.5, 5.0, 20.0):
        got = expected_log1p(torch.tensor(means), torch.tensor(theta), torch.tensor(scale))
        expected = torch.tensor([_exact(m, theta, scale) for m in means], dtype=torch.float32)
        torch.testing.assert_close(got, expected, atol=2e-4, rtol=0)


def test_expected_log_normalised_matches_simulated_counts():
    """Against log1p(1e4 x / sum x) of simulated cells, whose totals vary: the total at its mean is enough."""
    generator = torch.Generator().manual_seed(0)
    n_genes = 500
    shares = torch.distributions.Dirichlet(torch.full((n_genes,), 0.3)).sample()
    mean = (3000.0 * shares).expand(2, n_genes).clone()
    mean[1, :50] *= 0.3  # a knockdown of 50 genes
    theta = torch.exp(torch.empty(n_genes).uniform_(0.0, 3.0, generator=generator))
    rate = torch._standard_gamma(theta.expand(20000, 2, n_genes).contiguous()) * (mean / theta)
    counts = torch.poisson(rate)
    values = log_normalise(counts)
    simulated, standard_error = values.mean(0), values.std(0) / values.shape[0] ** 0.5
    analytic = expected_log_normalised(mean, theta)
    # within the Monte-Carlo error of the simulation, plus a little for the total taken at its mean
    assert ((analytic - simulated).abs() < 4.5 * standard_error + 3e-3).all()
    # the shift between the arms, the quantity an ATE reports
    shift_error = standard_error.square().sum(0).sqrt()
    assert ((analytic[1] - analytic[0]) - (simulated[1] - simulated[0])).abs().lt(4.5 * shift_error + 3e-3).all()
    assert (analytic[1] - analytic[0])[:50].mean() < -0.3  # the knockdown is there


@pytest.fixture(scope="module")
def trained_25_targets():
    pertpyro._settings.set_seed(0)
    adata = pertpyro.datasets.simulate(n_cells=2000, n_genes=100, n_targets=25, n_combinations=0, seed=0)
    pertpyro.setup_anndata(adata)
    model = pertpyro.PerturbationModel(adata, latent_dim=4, n_hidden=32)
    model.train(max_epochs=15, batch_size=256, lr=1e-2, progress_bar=False, early_stopping=False)
    return model


def test_analytic_and_table_ate_agree_with_the_simulation(trained_25_targets):
    model = trained_25_targets
    kwargs = {"n_samples": 20, "max_cells": 150, "seed": 0}  # 150 cells: Pearson ~0.997 against the simulation
    analytic = model.ate(estimator="analytic", **kwargs)
    simulated = model.ate(estimator="simulate", **kwargs)
    assert len(analytic) == 25 * 100
    assert np.corrcoef(analytic["mean"], simulated["mean"])[0, 1] >= 0.99
    overlap = (analytic["lower"] <= simulated["upper"]) & (simulated["lower"] <= analytic["upper"])
    assert overlap.mean() >= 0.99
    assert np.abs(analytic["mean"] - simulated["mean"]).max() < 0.15
    strong = simulated["mean"].abs() > 0.3  # the estimator keeps the effects' sizes, not only their ranks
    assert strong.sum() > 10
    ratio = analytic.loc[strong, "mean"] / simulated.loc[strong, "mean"]
    assert 0.9 < float(np.median(ratio)) < 1.1
    table = model.ate(estimator="table", **kwargs)  # the table estimator, against the same simulation
    assert np.corrcoef(table["mean"], simulated["mean"])[0, 1] >= 0.99
    overlap = (table["lower"] <= simulated["upper"]) & (simulated["lower"] <= table["upper"])
    assert overlap.mean() >= 0.99


def test_analytic_ate_rejects_an_unknown_estimator(trained_25_targets):
    with pytest.raises(ValueError, match="estimator must be one of"):
        trained_25_targets.ate(trained_25_targets.registry.targets[0], n_samples=2, estimator="exact")


def test_reading_only_the_chunk_targets_rows_gives_the_same_means(trained_25_targets):
    """Chunks of labels smaller than the targets read only their targets' rows: the same numbers as all rows."""
    model = trained_25_targets
    population = model._population(None, 40, 0)
    n_targets, n_genes = model.registry.n_targets, len(model.registry.genes)
    designs = torch.cat([torch.zeros(1, n_targets), torch.eye(n_targets)[:6], torch.eye(n_targets)[[1]] * 0])
    designs[-1, [2, 5]] = 1.0  # a combination
    with local_params():
        latents = abduct(model.guide, population)
    every_row = analytic_label_means(model.program, latents, population, designs, {}, chunk_elements=10**9)
    chunk_rows = analytic_label_means(model.program, latents, population, designs, {}, chunk_elements=3 * 40 * n_genes)
    torch.testing.assert_close(chunk_rows, every_row, atol=1e-5, rtol=1e-5)
    assert (every_row[1:] - every_row[0]).abs().max() > 0.3  # the labels' effects are there


def test_table_estimator_matches_the_per_cell_expectation(trained_25_targets):
    """One draw, every label and combination: the table's population means are the per-cell analytic ones."""
    model = trained_25_targets
    population = model._population(None, 300, 0)
    n_targets = model.registry.n_targets
    designs = torch.cat([torch.zeros(1, n_targets), torch.eye(n_targets), torch.eye(n_targets)[:5] * 0])
    designs[-5:, :5] = torch.eye(5)
    designs[-5:, 5:10] += torch.eye(5)  # five pairs
    with local_params(), torch.no_grad():
        latents = abduct(model.guide, population)
        exact = analytic_label_means(model.program, latents, population, designs, {})
        table = table_label_means(model.program, latents, population, designs, {})
    exact_shift, table_shift = exact[1:] - exact[0], table[1:] - table[0]
    assert exact_shift.abs().max() > 1.0  # strong effects are there
    # grid steps 0.125 in log share and 0.25 in the logit shift: interpolation errors of a few 1e-3
    assert (table_shift - exact_shift).abs().max() < 0.01
    assert (table - exact).abs().max() < 0.01
    assert np.corrcoef(table_shift.flatten(), exact_shift.flatten())[0, 1] > 0.9999


def test_table_estimator_falls_back_for_weighted_arms(trained_25_targets):
    """Per-label weights of the population cells: the per-cell analytic estimator answers (same numbers)."""
    model = trained_25_targets
    labels = list(model.registry.targets[:3])
    population = model._population(None, 60, 0)
    weights = np.random.default_rng(0).uniform(0.5, 2.0, size=(3, 60))
    kwargs = {"n_samples": 3, "weights": weights, "seed": 1}
    table = label_shift_draws(
        model.program, model.guide, population, labels, model.registry, estimator="table", **kwargs
    )
    exact = label_shift_draws(
        model.program, model.guide, population, labels, model.registry, estimator="analytic", **kwargs
    )
    torch.testing.assert_close(table, exact)


def test_curve_reader_is_exact_for_bilinear_functions():
    """``a + b j + c m + d j m`` on the grid, read between the nodes (and beyond it: at its edge): exact."""
    j, m = torch.arange(6.0)[:, None], torch.arange(3.0)[None, :]
    coefficients = torch.tensor([[1.0, 2.0, -1.0, 0.5], [0.0, -1.0, 3.0, 0.25]])  # two genes
    values = torch.stack([a + b * j + c * m + d * j * m for a, b, c, d in coefficients])  # (2, 6, 3)
    w_low = torch.tensor([-2, -3])  # w = SHARE_STEP * (w_low + j), lam = DEPTH_STEP * (m_low + m)
    curves = Curves(values, w_low, -1, values[torch.arange(2), -w_low, 1])
    position_w = torch.tensor([[0.0, 4.5], [2.25, 1.0], [5.0, 3.75], [-1.0, 7.0]])  # four labels
    position_m = torch.tensor([0.5, 2.0, 1.25, 0.0])
    w = (position_w + w_low) * 0.125
    lam = (position_m - 1.0) * 0.25
    got = curves.reader(lam, draws=2).read(torch.stack([w, w.flip(0)]))
    a, b, c, d = coefficients.T
    clamped = position_w.clamp(0.0, 5.0)
    expected = a + b * clamped + c * position_m[:, None] + d * clamped * position_m[:, None]
    torch.testing.assert_close(got[0], expected)
    torch.testing.assert_close(got[1], curves.reader(lam).read(w.flip(0)[None])[0])  # each draw on its own


def test_draw_quantiles_are_numpys():
    """The sorted-chunk quantiles equal ``np.quantile(..., axis=0)`` (linear), chunk boundaries included."""
    rng = np.random.default_rng(0)
    for n_draws in (1, 2, 7, 100):
        draws = rng.normal(size=(n_draws, 5, 7)).astype(np.float32)
        probs = (0.0, 0.05, 0.5, 0.95, 1.0)
        for got, expected in zip(draw_quantiles(draws, probs), np.quantile(draws, probs, axis=0), strict=True):
            assert got.dtype == expected.dtype
            np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


def test_table_draws_agree_with_per_draw_populations(trained_25_targets):
    """Every draw from one population's curves: the first draw is the per-draw table's; all draws agree with
    per-draw populations (abducted anew for every draw) in means and interval widths."""
    model = trained_25_targets
    population = model._population(None, 200, 0)
    labels = list(model.registry.targets)
    designs = torch.cat([torch.zeros(1, len(labels)), torch.eye(len(labels))])
    n_samples = 50
    with seeded(3), local_params(), torch.no_grad():
        shared = table_mean_draws(model.program, model.guide, population, designs, torch.empty(n_samples, 26, 100))
    cache: dict[str, object] = {}  # the noise table, built once
    with seeded(3), local_params(), torch.no_grad():
        per_draw = torch.stack(
            [
                table_label_means(model.program, abduct(model.guide, population), population, designs, {}, cache=cache)
                for _ in range(n_samples)
            ]
        )
    torch.testing.assert_close(shared[0], per_draw[0], atol=1e-5, rtol=0)  # same draw, same population
    shared, per_draw = shared[:, 1:] - shared[:, :1], per_draw[:, 1:] - per_draw[:, :1]
    shared_mean, per_draw_mean = shared.mean(0), per_draw.mean(0)
    assert per_draw_mean.abs().max() > 1.0  # strong effects are there
    # independent draws: the means differ by Monte-Carlo error, sd sqrt(2 / n_samples) of a draw's spread
    error = per_draw.std(0) * (2 / n_samples) ** 0.5
    assert ((shared_mean - per_draw_mean).abs() < 4 * error + 1e-3).float().mean() > 0.99
    assert np.corrcoef(shared_mean.flatten(), per_draw_mean.flatten())[0, 1] > 0.99
    width = shared.quantile(0.95, 0) - shared.quantile(0.05, 0)
    per_draw_width = per_draw.quantile(0.95, 0) - per_draw.quantile(0.05, 0)
    ratio = float((width / per_draw_width)[per_draw_mean.abs() > 0.1].median())
    assert 0.9 < ratio < 1.1  # the population's basal-state draws add next to nothing to the intervals


def test_table_draws_widen_their_curves(trained_25_targets, monkeypatch):
    """Draws read one at a time, the curves no wider than each draw: rebuilt when a draw leaves them, same numbers."""
    model = trained_25_targets
    population = model._population(None, 100, 0)
    labels = list(model.registry.targets[:10])
    kwargs = {"n_samples": 6, "seed": 5, "estimator": "table"}
    together = label_shift_draws(model.program, model.guide, population, labels, model.registry, **kwargs)
    builds = []
    build = Curves.build
    monkeypatch.setattr(_table_draws, "DRAW_CHUNK", 1)
    monkeypatch.setattr(_table_draws, "SHIFT_MARGIN", 0.0)
    monkeypatch.setattr(Curves, "build", classmethod(lambda cls, *a: builds.append(1) or build(*a)))
    alone = label_shift_draws(model.program, model.guide, population, labels, model.registry, **kwargs)
    assert len(builds) > 1
    torch.testing.assert_close(alone, together, atol=1e-5, rtol=0)


def test_global_sampler_draws_the_guides_distributions(trained_25_targets):
    """Mean-field sites: drawn from the guide's own distributions (their mean is the guide's loc); sites whose
    distribution depends on another draw: no sampler (the guide is run for every draw)."""
    model = trained_25_targets
    one_cell = model._population(None, 1, 0)
    with local_params(), torch.no_grad():
        sampler = _table_draws.global_sampler(model.guide, one_cell)
        assert sampler is not None
        draws = torch.stack([sampler()["effect"] for _ in range(400)])
    scale = model.guide.effect_scale().detach()
    # 400 draws: the mean's error is scale / 20
    assert ((draws.mean(0) - model.guide.effect_loc.detach()).abs() < 5 * scale / 20).all()
    torch.testing.assert_close(draws.std(0).median(), scale.median(), rtol=0.1, atol=0)

    def dependent_guide(*args):
        rate = pyro.sample("efficacy_rate", pyro.distributions.Normal(0.0, 1.0))
        pyro.sample("effect", pyro.distributions.Normal(rate, 1.0))

    assert _table_draws.global_sampler(dependent_guide, one_cell) is None


def test_table_draws_among_responders_agree_with_the_per_cell_expectation(trained_25_targets):
    """``responders=True`` (no mixing with the escapers): the table's draws agree with the per-cell analytic ones."""
    model = trained_25_targets
    population = model._population(None, 40, 0)
    truth = truth_shift_frame(model.adata)
    labels = list(truth.abs().max(axis=1).sort_values(ascending=False).index[:5])  # the five strongest knockouts
    args = (model.program, model.guide, population, labels, model.registry)
    kwargs = {"n_samples": 20, "seed": 2, "responders": True}
    table = label_shift_draws(*args, estimator="table", **kwargs)
    exact = label_shift_draws(*args, estimator="analytic", **kwargs)  # 5 labels x 40 cells: cheap
    strong = exact.mean(0).abs() > 0.3
    assert strong.sum() > 10
    # independent draws: the means differ by Monte-Carlo error, sd sqrt(2 / 20) of a draw's spread
    error = exact.std(0) * (2 / 20) ** 0.5
    assert ((table.mean(0) - exact.mean(0)).abs() < 4 * error + 0.01).float().mean() > 0.99
    # among responders the strong effects are larger than over all cells that received the guide
    intent = label_shift_draws(*args, estimator="table", n_samples=20, seed=2)
    assert float((table.mean(0)[strong].abs() / intent.mean(0)[strong].abs()).median()) > 1.05
