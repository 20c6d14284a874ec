"""effect_strength: the corrected slope is ~1 for an unbiased prediction and ~c for one scaled by c."""

from __future__ import annotations

import numpy as np
import pytest

import pertpyro
from pertpyro.data._statistics import observed_shift
from pertpyro.evaluation import corrected_slope, effect_strength


def test_corrected_slope_undoes_the_dilution_by_noise_in_the_observed_shifts():
    rng = np.random.default_rng(0)
    truth = rng.normal(0, 1, 5000)
    noise_sd = 0.7
    observed = truth + rng.normal(0, noise_sd, truth.size)
    slope, reliability, corrected = corrected_slope(0.6 * truth, observed, np.full(truth.size, noise_sd**2))
    assert slope == pytest.approx(0.6 / (1 + noise_sd**2), abs=0.03)  # the diluted slope
    assert reliability == pytest.approx(1 / (1 + noise_sd**2), abs=0.03)
    assert corrected == pytest.approx(0.6, abs=0.03)


def test_corrected_slope_refuses_unreliable_shifts_and_bad_shapes():
    rng = np.random.default_rng(1)
    observed = rng.normal(0, 1, 100)
    assert np.isnan(corrected_slope(observed, observed, np.full(100, 0.95))[2])  # almost all noise
    with pytest.raises(ValueError, match="one length"):
        corrected_slope(observed, observed[:50], np.ones(100))


@pytest.fixture(scope="module")
def halves():
    adata = pertpyro.datasets.simulate(
        n_cells=6000, n_genes=100, n_targets=4, n_strong=4, n_combinations=0, n_truth_cells=0, seed=3
    )
    pertpyro.setup_anndata(adata, perturbation_key="perturbation")
    first = np.random.default_rng(0).random(adata.n_obs) < 0.5
    return adata[first].copy(), adata[~first].copy()


def test_the_training_mean_of_other_cells_is_at_full_strength_and_half_of_it_at_half(halves):
    train, test = halves
    predicted = observed_shift(train)
    full = effect_strength(predicted, test)
    half = effect_strength(0.5 * predicted, test)
    assert (full["slope"] < full["corrected_slope"]).all()  # the raw slope is diluted
    assert full["corrected_slope"].mean() == pytest.approx(1.0, abs=0.1)
    assert half["corrected_slope"].mean() == pytest.approx(0.5, abs=0.05)


def test_effect_strength_names_missing_labels(halves):
    train, test = halves
    predicted = observed_shift(train).iloc[:1]
    with pytest.raises(ValueError, match="No predicted shifts"):
        effect_strength(predicted, test, labels=list(observed_shift(test).index))
