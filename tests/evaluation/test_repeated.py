"""Metrics over repeated splits and the paired differences model - baseline."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import pertpyro
from pertpyro.data._simulate import truth_shift_frame
from pertpyro.evaluation import paired_differences, repeated_metrics, split_cells, training_mean


def _table(model: list[float], baseline: list[float]) -> pd.DataFrame:
    rows = []
    for split, (m, b) in enumerate(zip(model, baseline, strict=True)):
        for method, value in (("model", m), ("training_mean", b)):
            rows.append({"split": split, "method": method, "subset": "all", "reference": "control", "mse_all": value})
    return pd.DataFrame(rows)


def test_paired_differences_hand_computed_t_interval():
    table = _table([1.1, 1.2, 1.3, np.nan], [1.0, 1.0, 1.0, 1.0])  # differences 0.1, 0.2, 0.3; the NaN split unpaired
    out = paired_differences(table, model="model", baselines=["training_mean"], metrics=["mse_all"])
    row = out.iloc[0]
    half = stats.t.ppf(0.975, df=2) * 0.1 / np.sqrt(3)
    assert row["n_splits"] == 3
    assert row["difference"] == pytest.approx(0.2)
    assert row["sd"] == pytest.approx(0.1)
    assert (row["lower"], row["upper"]) == pytest.approx((0.2 - half, 0.2 + half))
    assert row["model"] == pytest.approx(1.2)
    assert row["baseline"] == pytest.approx(1.0)
    wide = paired_differences(
        table, model="model", baselines=["training_mean"], metrics=["mse_all"], test_train_ratio=0.25
    ).iloc[0]
    corrected = stats.t.ppf(0.975, df=2) * 0.1 * np.sqrt(1 / 3 + 0.25)  # Nadeau and Bengio's variance
    assert wide["upper"] - 0.2 == pytest.approx(corrected)


def test_paired_differences_rejects_unknown_names():
    table = _table([1.0, 2.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="not in the table"):
        paired_differences(table, model="nope", baselines=["training_mean"], metrics=["mse_all"])
    with pytest.raises(ValueError, match="not columns"):
        paired_differences(table, model="model", baselines=["training_mean"], metrics=["pearson_all"])
    with pytest.raises(ValueError, match="level"):
        paired_differences(table, model="model", baselines=["training_mean"], metrics=["mse_all"], level=1.5)


@pytest.fixture(scope="module")
def screen():
    adata = pertpyro.datasets.simulate(
        n_cells=1200, n_genes=40, n_targets=6, n_combinations=0, n_truth_cells=2000, seed=3
    )
    pertpyro.setup_anndata(adata, perturbation_key="perturbation", control="control")
    return adata


def test_two_splits_pair_each_method_on_the_same_cells(screen):
    """Scored as the training mean, the 'model' ties it exactly on every split: both see the same cells."""
    calls = []

    def predict(parts, labels):
        calls.append(parts["test"].n_obs)
        return training_mean(parts["train"], labels)

    per_split = repeated_metrics(screen, lambda s: split_cells(screen, seed=s), [0, 1], predict, model_name="m")
    assert len(calls) == 2
    assert sorted(per_split["split"].unique()) == [0, 1]
    out = paired_differences(per_split, model="m", baselines=["training_mean", "shrunk_training_mean"])
    tie = out[out["baseline_method"] == "training_mean"]
    assert np.allclose(tie["difference"], 0)
    assert np.allclose(tie[["lower", "upper"]], 0)
    assert (out["n_splits"] == 2).all()


def test_two_splits_oracle_beats_training_mean_and_done_splits_are_not_refitted(screen):
    """The simulator's true shifts beat the training mean on MSE on each split; a done split is reused as given."""
    truth = truth_shift_frame(screen)
    calls = []

    def oracle(parts, labels):
        calls.append(1)
        return truth.loc[labels]

    first = repeated_metrics(screen, lambda s: split_cells(screen, seed=s), [5], oracle, model_name="oracle")
    per_split = repeated_metrics(
        screen,
        lambda s: split_cells(screen, seed=s),
        [5, 6],
        oracle,
        model_name="oracle",
        done={5: first.drop(columns="split")},
    )
    assert len(calls) == 2  # one for `first`, one for seed 6
    wide = per_split[(per_split["subset"] == "all") & (per_split["reference"] == "control")]
    mse = wide.pivot(index="split", columns="method", values="mse_all")
    assert (mse["oracle"] < mse["training_mean"]).all()
    out = paired_differences(per_split, model="oracle", metrics=["mse_all"])
    assert (out["difference"] < 0).all()
