"""Evaluation: splits, shift metrics (against hand-computed values), baselines with planted truth, the runner."""

import logging
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import pertpyro
from pertpyro._keys import REGISTRY_KEY
from pertpyro.data import log_normalise, mean_expression, observed_shift, strong_perturbations
from pertpyro.data._registry import Registry
from pertpyro.evaluation import (
    BASELINES,
    METRIC_COLUMNS,
    additive,
    ate_metrics,
    format_table,
    no_change,
    shift_metrics,
    shrunk_training_mean,
    split_cells,
    split_heldout_combinations,
    split_heldout_perturbations,
    summarise,
    topk_jaccard,
    training_mean,
)

PAPALEXI = Path(pertpyro.__file__).parent / "data" / "files" / "papalexi2021_thp1_lowmoi.h5ad"


def _register(adata: ad.AnnData, *, key: str = "perturbation", control: str = "control") -> ad.AnnData:
    labels = sorted(set(adata.obs[key].astype(str)) - {control})
    targets = sorted({t for lab in labels for t in lab.split("+")})
    adata.uns[REGISTRY_KEY] = Registry(
        perturbation_key=key,
        control=control,
        delimiter="+",
        targets=tuple(targets),
        genes=tuple(adata.var_names.astype(str)),
    ).to_dict()
    return adata


def _make_adata(counts: np.ndarray, labels: list[str], *, sparse: bool = False) -> ad.AnnData:
    obs = pd.DataFrame({"perturbation": labels}, index=[f"cell{i}" for i in range(len(labels))])
    var = pd.DataFrame(index=[f"g{j}" for j in range(counts.shape[1])])
    X = sp.csr_matrix(counts.astype(np.float32)) if sparse else counts.astype(np.float32)
    return _register(ad.AnnData(X=X, obs=obs, var=var))


# Planted log-scale effects of singles on 12 genes; a combination's effect is the sum of its singles'.
N_GENES = 12
EFFECTS = {
    "A": np.r_[2.0, -1.5, 1.0, np.zeros(9)],
    "B": np.r_[np.zeros(3), 1.5, -1.0, 0.5, np.zeros(6)],
    "C": np.r_[np.zeros(8), 0.1, 0.0, 0.0, 0.0],
}


def _effect(label: str) -> np.ndarray:
    return np.zeros(N_GENES) if label == "control" else sum(EFFECTS[t] for t in label.split("+"))


def _synthetic(n_per_label: dict[str, int], *, seed: int = 0, noise: bool = True) -> ad.AnnData:
    """Poisson counts around ``base * exp(effect)``; without noise every cell of a label has identical counts."""
    rng = np.random.default_rng(seed)
    base = np.linspace(20.0, 60.0, N_GENES)
    labels, rows = [], []
    for label, n in n_per_label.items():
        mean = base * np.exp(_effect(label))
        block = rng.poisson(mean, size=(n, N_GENES)) if noise else np.tile(np.round(mean), (n, 1))
        rows.append(block)
        labels += [label] * n
    order = rng.permutation(len(labels))  # interleave labels, as in a real screen
    return _make_adata(np.vstack(rows)[order], [labels[i] for i in order], sparse=True)


SCREEN = {"control": 120, "A": 60, "B": 50, "C": 40, "A+B": 45, "A+C": 30}


# --------------------------------------------------------------------------------------------------------- splits
def test_split_cells_disjoint_covering_stratified_deterministic():
    adata = _synthetic(SCREEN)
    split = split_cells(adata, seed=3)
    assert split.index.equals(adata.obs_names)
    assert set(split.unique()) == {"train", "val", "test"}  # one value per cell: disjoint and covering
    for label, n in SCREEN.items():
        counts = split[(adata.obs["perturbation"] == label).to_numpy()].value_counts()
        n_train, n_val = round(0.64 * n), round(0.16 * n)
        assert counts["train"] == n_train
        assert counts["val"] == n_val
        assert counts["test"] == n - n_train - n_val
    assert split.equals(split_cells(adata, seed=3))
    assert not split.equals(split_cells(adata, seed=4))


def test_split_cells_protocol_is_one_generator_over_sorted_labels():
    adata = _synthetic({"control": 11, "B": 7, "A": 9})
    labels = adata.obs["perturbation"].to_numpy()
    rng = np.random.default_rng(0)
    expected = np.empty(adata.n_obs, dtype=object)
    for label in sorted(set(labels)):  # "A", "B", "control"
        perm = rng.permutation(np.flatnonzero(labels == label))
        n_train, n_val = round(0.64 * len(perm)), round(0.16 * len(perm))
        expected[perm[:n_train]], expected[perm[n_train : n_train + n_val]] = "train", "val"
        expected[perm[n_train + n_val :]] = "test"
    assert (split_cells(adata, seed=0).to_numpy() == expected).all()


@pytest.mark.parametrize("fractions", [(0.5, 0.2, 0.2), (0.7, 0.3), (1.2, -0.1, -0.1)])
def test_split_cells_rejects_bad_fractions(fractions):
    with pytest.raises(ValueError, match="fractions"):
        split_cells(_synthetic(SCREEN), fractions=fractions)


def test_split_cells_label_with_too_few_cells_is_kept_and_reported(caplog):
    adata = _synthetic({"control": 30, "A": 20, "B": 1})
    with caplog.at_level(logging.WARNING, logger="pertpyro.evaluation"):
        split = split_cells(adata)
    assert split[(adata.obs["perturbation"] == "B").to_numpy()].tolist() == ["train"]
    assert "'B'" in caplog.text


def test_split_heldout_perturbations():
    adata = _synthetic(SCREEN)
    labels = adata.obs["perturbation"].to_numpy()
    split = split_heldout_perturbations(adata, ["C", "A+C"], seed=1)
    assert split.attrs["heldout"] == ["A+C", "C"]
    assert (split[np.isin(labels, ["C", "A+C"])] == "test").all()
    assert set(split[labels == "control"]) == {"train", "val", "test"}
    seen = np.isin(labels, ["A", "B", "A+B"])
    assert set(split[seen]) == {"train", "val"}
    assert (split[seen] == "train").sum() == pytest.approx(0.8 * seen.sum(), abs=3)
    with pytest.raises(ValueError, match="Unknown perturbation labels"):
        split_heldout_perturbations(adata, ["D"])
    with pytest.raises(ValueError, match="control"):
        split_heldout_perturbations(adata, ["control"])


def test_split_heldout_combinations():
    adata = _synthetic(SCREEN)
    labels = adata.obs["perturbation"].to_numpy()
    split = split_heldout_combinations(adata, heldout=1, seed=0)
    (chosen,) = split.attrs["heldout"]
    assert chosen in ("A+B", "A+C")
    assert (split[labels == chosen] == "test").all()
    assert split.equals(split_heldout_combinations(adata, heldout=1, seed=0))
    listed = split_heldout_combinations(adata, heldout=["A+B"])
    assert set(listed[labels == "A+B"]) == {"test"}
    assert "test" not in set(listed[labels == "A"])
    with pytest.raises(ValueError, match="not combinations"):
        split_heldout_combinations(adata, heldout=["A"])
    with pytest.raises(ValueError, match="Cannot hold out 3"):
        split_heldout_combinations(adata, heldout=3)


# -------------------------------------------------------------------------------------------------------- metrics
def test_log_normalise_hand_values_and_sparse_equals_dense():
    counts = np.array([[1.0, 3.0, 0.0], [0.0, 0.0, 0.0], [5.0, 0.0, 5.0]])
    expected = np.array(
        [[np.log1p(2500.0), np.log1p(7500.0), 0.0], [0.0, 0.0, 0.0], [np.log1p(5000.0), 0.0, np.log1p(5000.0)]]
    )
    np.testing.assert_allclose(log_normalise(counts), expected)
    sparse = log_normalise(sp.csr_matrix(counts))
    assert sp.issparse(sparse)
    np.testing.assert_allclose(sparse.toarray(), expected)
    rng = np.random.default_rng(0)
    big = rng.poisson(0.3, size=(200, 50)).astype(np.float32)
    np.testing.assert_allclose(log_normalise(sp.csr_matrix(big)).toarray(), log_normalise(big), rtol=1e-12)


def test_mean_expression_chunked_equals_direct():
    rng = np.random.default_rng(1)
    counts = rng.poisson(2.0, size=(103, 7))
    labels = rng.choice(["x", "y", "z"], size=103)
    dense = log_normalise(counts)
    for data in (counts, sp.csr_matrix(counts)):
        means = mean_expression(data, labels, chunk_size=10)
        assert list(means.index) == ["x", "y", "z"]
        for lab in "xyz":
            np.testing.assert_allclose(means.loc[lab].to_numpy(), dense[labels == lab].mean(axis=0), rtol=1e-12)


def test_observed_shift_both_references():
    # cells: control x2, A x1, B x3; each row sums to 1e4 so log_normalise is log1p of the counts.
    rows = {"control": [[5e3, 5e3], [5e3, 5e3]], "A": [[9e3, 1e3]], "B": [[1e3, 9e3]] * 3}
    labels = [lab for lab, r in rows.items() for _ in r]
    adata = _make_adata(np.vstack([np.asarray(r) for r in rows.values()]), labels)
    L = {lab: np.log1p(np.asarray(r[0])) for lab, r in rows.items()}
    shift = observed_shift(adata)
    assert list(shift.index) == ["A", "B"]
    np.testing.assert_allclose(shift.loc["A"], L["A"] - L["control"])
    pooled = (1 * L["A"] + 3 * L["B"]) / 4  # all perturbed cells, each weighing the same
    np.testing.assert_allclose(observed_shift(adata, reference="perturbed").loc["B"], L["B"] - pooled)


def test_shift_metrics_hand_computed():
    genes = ["g0", "g1", "g2", "g3"]
    observed = pd.DataFrame([[1.0, 2.0, 3.0, 4.0], [0.5, -3.0, 1.0, 2.0]], index=["p", "q"], columns=genes)
    predicted = pd.DataFrame([[1.0, 2.0, 3.0, 5.0], [0.0, -1.0, 1.0, 1.0]], index=["p", "q"], columns=genes)
    m = shift_metrics(predicted, observed, top_k=2)
    assert list(m.columns) == list(METRIC_COLUMNS)
    # p: residuals (0, 0, 0, -1); SS_tot = 5; centred products 6.5, sum squares 8.75 and 5.
    assert m.loc["p", "mse_all"] == pytest.approx(0.25)
    assert m.loc["p", "r2_all"] == pytest.approx(0.8)
    assert m.loc["p", "pearson_all"] == pytest.approx(6.5 / np.sqrt(8.75 * 5.0))
    # p top-2 by |obs|: g3, g2 -> obs (4, 3), pred (5, 3)
    assert m.loc["p", "pearson_topk"] == pytest.approx(1.0)
    assert m.loc["p", "mse_topk"] == pytest.approx(0.5)
    assert m.loc["p", "r2_topk"] == pytest.approx(1.0 - 1.0 / 0.5)
    assert m.loc["p", "jaccard_topk"] == pytest.approx(1.0)
    # q top-2 by |obs|: g1 (-3) and g3 (2) -> obs (-3, 2), pred (-1, 1); SS_tot = 12.5, SS_res = 5
    assert m.loc["q", "mse_topk"] == pytest.approx(2.5)
    assert m.loc["q", "r2_topk"] == pytest.approx(0.6)
    assert m.loc["q", "pearson_topk"] == pytest.approx(1.0)
    # pred top-2 by |pred|: ties among g1, g2, g3 go to the earlier genes -> {g1, g2}; obs {g1, g3}
    assert m.loc["q", "jaccard_topk"] == pytest.approx(1 / 3)
    assert topk_jaccard(predicted.loc["q"].to_numpy(), observed.loc["q"].to_numpy(), k=2) == pytest.approx(1 / 3)
    assert topk_jaccard(predicted, observed, k=2).tolist() == pytest.approx([1.0, 1 / 3])


def test_shift_metrics_undefined_cases_are_nan():
    observed = pd.DataFrame([[1.0, -2.0, 0.0], [0.3, 0.3, 0.3]], index=["p", "flat"], columns=["a", "b", "c"])
    zeros = observed * 0.0
    m = shift_metrics(zeros, observed, top_k=2)
    assert np.isnan(m.loc["p", "pearson_all"])
    assert np.isnan(m.loc["p", "pearson_topk"])
    assert np.isnan(m.loc["p", "jaccard_topk"])
    assert m.loc["p", "mse_all"] == pytest.approx(5.0 / 3.0)
    assert m.loc["p", "r2_all"] == pytest.approx(1.0 - (5.0 / 3.0) / (14.0 / 9.0))
    assert np.isnan(m.loc["flat", "r2_all"])  # constant observed shift
    partial = shift_metrics(observed.loc[["p"]], observed)  # no prediction for "flat"
    assert partial.loc["p", "mse_all"] == 0.0
    assert partial.loc["flat"].isna().all()
    with pytest.raises(ValueError, match="lack 1 observed genes"):
        shift_metrics(observed[["a", "b"]], observed)


def test_summarise_all_and_strong():
    per = pd.DataFrame(
        {c: [1.0, 2.0, 3.0, np.nan] for c in METRIC_COLUMNS}, index=pd.Index(["a", "b", "c", "d"], name="perturbation")
    )
    s = summarise(per, strong=["b", "c", "absent"])
    assert list(s.index) == ["all", "strong"]
    assert s.loc["all", "pearson_all"] == pytest.approx(2.0)
    assert s.loc["strong", "pearson_all"] == pytest.approx(2.5)
    assert s.loc["all", "n_perturbations"] == 4
    assert s.loc["all", "n_predicted"] == 3
    assert s.loc["strong", "n_perturbations"] == 2
    assert list(summarise(per).index) == ["all"]


# ------------------------------------------------------------------------------------------------------ baselines
def test_training_mean_recovers_planted_shift_without_noise():
    adata = _synthetic(SCREEN, noise=False)
    pred = training_mean(adata, ["A", "B", "control"])
    control = log_normalise(np.round(np.linspace(20.0, 60.0, N_GENES) * np.exp(_effect("control")))[None])[0]
    for label in ("A", "B"):
        planted = log_normalise(np.round(np.linspace(20.0, 60.0, N_GENES) * np.exp(_effect(label)))[None])[0]
        np.testing.assert_allclose(pred.loc[label].to_numpy(), planted - control, atol=1e-12)
    assert (pred.loc["control"] == 0).all()
    assert pred.attrs["unpredictable"] == []
    # no sampling noise -> nothing to shrink
    np.testing.assert_allclose(shrunk_training_mean(adata, ["A", "B"]).to_numpy(), pred.loc[["A", "B"]].to_numpy())


def test_shrinkage_moves_toward_prior_mean():
    adata = _synthetic(SCREEN, seed=2)
    labels = ["A", "B", "C", "A+B", "A+C"]
    raw = training_mean(adata, labels)
    for prior, mu in (("control", np.zeros(N_GENES)), ("mean", raw.mean(axis=0).to_numpy())):
        shrunk = shrunk_training_mean(adata, labels, prior_mean=prior)
        before, after = np.abs(raw.to_numpy() - mu), np.abs(shrunk.to_numpy() - mu)
        assert (after <= before + 1e-12).all()
        assert (after < before - 1e-6).any()
        # same sign as the raw shift about the prior mean: shrinkage never overshoots
        assert (np.sign(shrunk.to_numpy() - mu) * np.sign(raw.to_numpy() - mu) >= 0).all()
    with pytest.raises(ValueError, match="prior_mean"):
        shrunk_training_mean(adata, labels, prior_mean="median")


def test_additive_sums_singles_and_reports_unpredictable(caplog):
    adata = _synthetic(SCREEN, seed=3)
    single = training_mean(adata, ["A", "B", "C"])
    with caplog.at_level(logging.WARNING, logger="pertpyro.evaluation"):
        pred = additive(adata, ["A+B", "A+C", "A", "B+D", "D"])
    np.testing.assert_allclose(pred.loc["A+B"].to_numpy(), (single.loc["A"] + single.loc["B"]).to_numpy())
    np.testing.assert_allclose(pred.loc["A+C"].to_numpy(), (single.loc["A"] + single.loc["C"]).to_numpy())
    np.testing.assert_allclose(pred.loc["A"].to_numpy(), single.loc["A"].to_numpy())
    assert list(pred.index) == ["A+B", "A+C", "A", "B+D", "D"]  # nothing dropped
    assert pred.loc[["B+D", "D"]].isna().all().all()
    assert pred.attrs["unpredictable"] == ["B+D", "D"]
    assert "B+D" in caplog.text


@pytest.mark.parametrize("name", ["training_mean", "shrunk_training_mean", "additive"])
def test_every_baseline_marks_unseen_labels(name):
    adata = _synthetic(SCREEN)
    train = adata[(adata.obs["perturbation"] != "C").to_numpy()].copy()
    pred = BASELINES[name](train, ["A", "C"])
    assert pred.loc["C"].isna().all()
    assert np.isfinite(pred.loc["A"]).all()
    assert pred.attrs["unpredictable"] == ["C"]
    assert (no_change(train, ["C"]) == 0).all().all()


# --------------------------------------------------------------------------------------------------------- runner
class _OracleModel:
    """Predicts the observed test shifts exactly: its metrics must be perfect."""

    def __init__(self, adata_train: ad.AnnData, adata_test: ad.AnnData, *, refuse: tuple[str, ...] = ()) -> None:
        self.adata = adata_train
        self._truth = observed_shift(adata_test)
        self._refuse = refuse

    def predict_shift(self, labels: list[str]) -> pd.DataFrame:
        refused = [lab for lab in labels if lab in self._refuse]
        if refused:
            raise ValueError(f"Unknown perturbation target in {refused}")
        return self._truth.loc[labels]

    def iwelbo(self, adata: ad.AnnData) -> np.ndarray:
        return np.full(adata.n_obs, -12.5)


@pytest.fixture(scope="module")
def split_screen():
    adata = _synthetic({"control": 300, "A": 150, "B": 150, "C": 120, "A+B": 120, "A+C": 100}, seed=5)
    split = split_cells(adata, seed=0).to_numpy()
    return adata[split == "train"].copy(), adata[split == "test"].copy()


def test_runner_oracle_model_is_perfect(split_screen):
    train, test = split_screen
    table = ate_metrics(_OracleModel(train, test), test, reference=("control", "perturbed"))
    assert table["method"].iloc[0] == "_OracleModel"
    assert list(table["method"].unique()) == ["_OracleModel", *BASELINES]
    oracle = table[table["method"] == "_OracleModel"]
    assert len(oracle) == 4  # (all, strong) x (control, perturbed)
    np.testing.assert_allclose(oracle[["pearson_all", "pearson_topk", "r2_all", "jaccard_topk"]], 1.0, atol=1e-12)
    np.testing.assert_allclose(oracle[["mse_all", "mse_topk"]], 0.0, atol=1e-20)
    assert (oracle["iwelbo"] == -12.5).all()
    assert table.loc[table["method"] != "_OracleModel", "iwelbo"].isna().all()
    assert table.loc[table["method"] == "no_change", "pearson_all"].isna().all()


def test_runner_baselines_only_and_strong_default(split_screen):
    train, test = split_screen
    table = ate_metrics(None, test, adata_train=train)
    assert list(table["method"].unique()) == list(BASELINES)
    assert set(table["subset"]) == {"all", "strong"}
    assert set(table["reference"]) == {"control"}
    assert "iwelbo" not in table
    # C has a single 0.1 effect on one gene: not strong; every label with A or B is.
    assert strong_perturbations(train) == ["A", "A+B", "A+C", "B"]
    row = table[(table["subset"] == "strong")].set_index("method")
    assert (row["n_perturbations"] == 4).all()
    assert row.loc["training_mean", "mse_all"] < row.loc["no_change", "mse_all"]
    with pytest.raises(ValueError, match="adata_train"):
        ate_metrics(None, test)


def test_runner_per_perturbation_and_refused_labels(split_screen, caplog):
    train, test = split_screen
    model = _OracleModel(train, test, refuse=("A+C",))
    with caplog.at_level(logging.WARNING, logger="pertpyro.evaluation"):
        long = ate_metrics(model, test, per_perturbation=True, baselines=["training_mean"], model_name="oracle")
    assert set(long["method"]) == {"oracle", "training_mean"}
    oracle = long[long["method"] == "oracle"].set_index("perturbation")
    assert list(oracle.index) == ["A", "A+B", "A+C", "B", "C"]
    assert oracle.loc["A+C", list(METRIC_COLUMNS)].isna().all()
    assert oracle.loc["A", "mse_all"] == 0.0
    assert oracle.loc["A", "strong"]
    assert not oracle.loc["C", "strong"]
    assert "A+C" in caplog.text
    summary = ate_metrics(model, test, baselines=[], model_name="oracle", reference="perturbed")
    assert summary.loc[summary["subset"] == "all", "n_predicted"].item() == 4
    with pytest.raises(ValueError, match="Unknown baselines"):
        ate_metrics(model, test, baselines=["linear"])


def test_format_table_markdown():
    df = pd.DataFrame({"method": ["a|b"], "pearson_all": [np.nan], "mse_all": [0.035612]})
    text = format_table(df)
    assert text.splitlines() == [
        "| method | pearson_all | mse_all |",
        "| --- | --- | --- |",
        "| a\\|b | n/a | 0.0356 |",
    ]


# ------------------------------------------------------------------------------------------- ANCHORS, real data
@pytest.mark.skipif(not PAPALEXI.exists(), reason="shipped Papalexi data missing")
def test_reproduces_anchors_on_papalexi():
    adata = _register(ad.read_h5ad(PAPALEXI))
    split = split_cells(adata, seed=0).to_numpy()
    train, test = adata[split == "train"].copy(), adata[split == "test"].copy()
    table = ate_metrics(None, test, adata_train=train, baselines=["no_change", "training_mean", "shrunk_training_mean"])
    rows = table[(table["subset"] == "all")].set_index("method")
    assert rows.loc["no_change", "mse_all"] == pytest.approx(0.0515, abs=5e-5)
    assert rows.loc["training_mean", ["pearson_all", "pearson_topk", "mse_all"]].tolist() == pytest.approx(
        [0.330, 0.472, 0.0356], abs=5e-4
    )
    assert rows.loc["shrunk_training_mean", ["pearson_all", "pearson_topk", "mse_all"]].tolist() == pytest.approx(
        [0.342, 0.498, 0.0320], abs=5e-4
    )
    assert strong_perturbations(train) == ["IFNGR1", "IFNGR2", "IRF1", "JAK2", "SMAD4", "STAT1"]
