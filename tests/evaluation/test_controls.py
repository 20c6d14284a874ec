"""control_table and null_calibration on draws of known truth: nulls at the nominal rates, knockdowns detected."""

from __future__ import annotations

import numpy as np
import pytest

from pertpyro.evaluation import control_table, null_pvalues, positive_control_labels
from pertpyro.posterior import IntervalCalibration, null_calibration

GENES = [f"g{j}" for j in range(400)] + ["A", "B"]


def draws_with_truth(rng, *, spread: float = 1.0, n_samples: int = 400) -> tuple[np.ndarray, list[str]]:
    """Posterior draws whose errors are ``spread`` times the posterior sd: two nulls, two knockouts A, B."""
    labels = ["A", "B", "null_1", "null_2"]
    truth = np.zeros((len(labels), len(GENES)))
    truth[0, :40], truth[1, 40:80] = 0.8, -0.8  # real effects of A and B
    truth[0, GENES.index("A")], truth[1, GENES.index("B")] = -1.0, -1.0  # their knockdowns
    sd = 0.05
    centre = truth + rng.normal(0, spread * sd, truth.shape)  # the posterior mean misses by spread * sd
    return centre + rng.normal(0, sd, (n_samples, *truth.shape)), labels


def test_calibrated_posterior_meets_the_nominal_rates_and_finds_the_knockdowns():
    draws, labels = draws_with_truth(np.random.default_rng(0), spread=1.0)
    table = control_table(draws, labels, GENES, nulls=["null_1", "null_2"], positives=["A", "B"], fdr=0.1)
    total = table.set_index("label").loc["all nulls"]
    for level in (0.5, 0.8, 0.9, 0.95):  # error sd = posterior sd: exclusion rate 1 - level
        assert total[f"excludes 0 at {level:.0%}"] == pytest.approx(1 - level, abs=0.03)
    assert total["hits"] == 0  # P(|shift| > 0.1) is tiny for every null gene
    positive = table[table["kind"] == "positive"]
    assert positive["detected"].all()
    assert (positive["upper"] < 0).all()
    assert (positive["hits"] == 1).all()
    assert total["n_genes"] == 2 * len(GENES)


def test_null_calibration_recovers_the_missing_spread():
    rng = np.random.default_rng(1)
    draws, labels = draws_with_truth(rng, spread=np.sqrt(3.0))  # total error sd = 2 x the posterior sd
    nulls = draws[:, 2:]
    raw = control_table(draws, labels, GENES, nulls=["null_1", "null_2"])
    assert raw.set_index("label").loc["all nulls", "excludes 0 at 90%"] > 0.3  # overconfident
    calibration = null_calibration(nulls[:, :1])  # fitted on null_1, scored on null_2
    assert calibration.scale == pytest.approx(2.0, abs=0.25)
    held = control_table(draws, labels, GENES, nulls=["null_2"], calibration=calibration)
    assert held.iloc[0]["excludes 0 at 90%"] == pytest.approx(0.1, abs=0.04)
    p = null_pvalues(nulls[:, 1:], calibration)
    assert np.mean(p < 0.1) == pytest.approx(held.iloc[0]["excludes 0 at 90%"], abs=0.01)
    assert null_calibration(nulls, IntervalCalibration(5.0, 0.2)) == IntervalCalibration(5.0, 0.2)  # only widens


def test_positive_controls_are_the_targets_that_are_genes():
    class Reg:
        targets = ("A", "B", "C", "null_NT1")
        genes = ("A", "B", "null_NT1", "x")

    assert positive_control_labels(Reg(), exclude=["null_NT1"]) == ["A", "B"]


def test_bad_input_is_named():
    draws, labels = draws_with_truth(np.random.default_rng(0), n_samples=10)
    with pytest.raises(ValueError, match="have no draws"):
        control_table(draws, labels, GENES, nulls=["null_9"])
    with pytest.raises(ValueError, match="must be measured genes"):
        control_table(draws, labels, GENES, nulls=["null_1"], positives=["null_2"])
    with pytest.raises(ValueError, match="shape"):
        control_table(draws[:, :2], labels, GENES, nulls=["null_1"])
