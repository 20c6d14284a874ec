"""call_agreement and responder_effects on screens with known responders: true calls isolate the effect."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData

import pertpyro
from pertpyro.evaluation import call_agreement, responder_effects, responder_shifts

N_GENES = 40


def screen(rng, *, n_control=600, n_target=600, rate=0.5, prefix=""):
    """Counts of controls and two targets A, B (genes of the screen); in a share ``rate`` of each target's cells
    (the responders, returned as truth) genes 0-9 rise e-fold and the target's own gene drops 20-fold."""
    labels = np.array(["control"] * n_control + ["A"] * n_target + ["B"] * n_target)
    responders = (labels != "control") & (rng.random(len(labels)) < rate)
    genes = ["A", "B"] + [f"g{j}" for j in range(N_GENES - 2)]
    log_mu = np.full((len(labels), N_GENES), np.log(20.0))
    log_mu[responders, 2:12] += 1.0
    for t in ("A", "B"):
        log_mu[responders & (labels == t), genes.index(t)] -= np.log(20.0)
    counts = rng.poisson(np.exp(log_mu)).astype(np.float32)
    names = [f"{prefix}c{i}" for i in range(len(labels))]
    adata = AnnData(counts, obs=pd.DataFrame({"perturbation": labels}, index=names), var=pd.DataFrame(index=genes))
    pertpyro.setup_anndata(adata, perturbation_key="perturbation", control="control")
    return adata, pd.Series(responders, index=names)


def test_agreement_counts_and_kappa():
    labels = pd.Series(["control"] * 2 + ["A"] * 10 + ["B"] * 4, index=[f"c{i}" for i in range(16)])
    a = pd.Series([np.nan, np.nan, *[True] * 6, *[False] * 4, True, True, True, True], index=labels.index)
    b = a.copy()
    b.iloc[2:4] = False  # A: 2 of 10 cells called differently
    table = call_agreement(a, b, labels, control="control", names=("x", "y"))
    assert list(table.index) == ["A", "B", "all"]
    assert table.loc["A", "agreement"] == pytest.approx(0.8)
    # 2x2 table of A: x=T,y=T 4; x=T,y=F 2; x=F,y=F 4 -> p_o 0.8, p_e 0.6*0.4 + 0.4*0.6 = 0.48
    assert table.loc["A", "kappa"] == pytest.approx((0.8 - 0.48) / (1 - 0.48))
    assert table.loc["A", "responders_x"] == pytest.approx(0.6)
    assert table.loc["A", "responders_y"] == pytest.approx(0.4)
    assert np.isnan(table.loc["B", "kappa"])  # every cell a responder for both: chance agreement is 1
    b.iloc[-4:] = False  # B: one method calls every cell a responder, the other none
    assert np.isnan(call_agreement(a, b, labels, control="control").loc["B", "kappa"])
    assert call_agreement(a, b, labels, control="control").loc["B", "agreement"] == 0.0
    assert table.loc["all", "n_cells"] == 14


def test_agreement_of_independent_calls_is_chance():
    rng = np.random.default_rng(0)
    labels = pd.Series(["A"] * 4000, index=[f"c{i}" for i in range(4000)])
    a = pd.Series(rng.random(4000) < 0.5, index=labels.index)
    b = pd.Series(rng.random(4000) < 0.3, index=labels.index)
    table = call_agreement(a, b, labels, control="control")
    assert abs(table.loc["A", "kappa"]) < 0.05  # sd of kappa at n=4000 is about 0.016
    assert call_agreement(a, a, labels, control="control").loc["A", "kappa"] == 1.0


def test_bad_calls_are_rejected():
    labels = pd.Series(["control", "A", "A"], index=["c0", "c1", "c2"])
    good = pd.Series([True, False], index=["c1", "c2"])
    with pytest.raises(ValueError, match="no call for 1 perturbed"):
        call_agreement(good.iloc[:1], good, labels, control="control")
    with pytest.raises(ValueError, match="threshold probabilities"):
        call_agreement(pd.Series([0.3, 0.9], index=["c1", "c2"]), good, labels, control="control")
    with pytest.raises(ValueError, match="NaN"):
        call_agreement(pd.Series([np.nan, True], index=["c1", "c2"]), good, labels, control="control")
    with pytest.raises(ValueError, match="two different"):
        call_agreement(good, good, labels, control="control", names=("x", "x"))


def test_responder_shifts_recover_the_effect():
    adata, truth = screen(np.random.default_rng(1))
    shifts = responder_shifts(adata, truth)
    # e-fold on 10 of 40 genes also raises the library 1.43-fold: 1 - log(1.43) = 0.64 after normalising
    assert shifts.responders.loc["A", "g5"] == pytest.approx(0.64, abs=0.08)
    assert abs(shifts.nonresponders.loc["A", "g5"]) < 0.1
    assert shifts.responders.loc["A", "A"] < -1.5
    assert abs(shifts.nonresponders.loc["A", "A"]) < 0.1
    assert shifts.n_responders["A"] == int(truth[adata.obs["perturbation"] == "A"].sum())


def test_true_calls_isolate_the_effect_and_random_calls_do_not():
    rng = np.random.default_rng(2)
    train, truth_train = screen(rng, prefix="tr")
    test, truth_test = screen(rng, n_control=300, n_target=300, prefix="te")
    true = responder_effects(train, test, truth_train, truth_test)
    coin = responder_effects(  # calls unrelated to the effect, at the same rate
        train,
        test,
        pd.Series(rng.random(train.n_obs) < 0.5, index=train.obs_names),
        pd.Series(rng.random(test.n_obs) < 0.5, index=test.obs_names),
    )
    for t in ("A", "B"):
        # responders carry the whole effect: 1 / rate = 2 on the intent-to-treat yardstick; escapers none
        assert true.loc[t, "responder_effect"] == pytest.approx(2.0, abs=0.25)
        assert abs(true.loc[t, "nonresponder_effect"]) < 0.15
        assert coin.loc[t, "responder_effect"] == pytest.approx(1.0, abs=0.25)
        assert coin.loc[t, "nonresponder_effect"] == pytest.approx(1.0, abs=0.25)
        assert true.loc[t, "target_responders"] < coin.loc[t, "target_responders"] - 1.0
        assert coin.loc[t, "target_nonresponders"] < -1.0  # random "escapers" keep half the knockdowns
        assert abs(true.loc[t, "target_nonresponders"]) < 0.15
        assert true.loc[t, "mse_all"] < coin.loc[t, "mse_all"]
        assert true.loc[t, "pearson_all"] > 0.9
