"""cell-eval inside ``pertpyro evaluate``: the cells it is handed (no cell-eval needed) and the section itself."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import yaml

from pertpyro import cli
from pertpyro.data._registry import get_registry
from pertpyro.evaluation import _celleval
from pertpyro.evaluation._baselines import training_mean
from pertpyro.evaluation._celleval import evaluation_cells, shift_ratios, shifted_counts, write_cell_eval_inputs


class CopyGenerator:
    """A stand-in model whose generated cells are the source cells' counts (no effect of any perturbation)."""

    def __init__(self, registry):
        self.registry = registry
        self.calls = []

    def predict_cells(self, cells, perturbations, *, seed):
        self.calls.append(list(perturbations))
        out = ad.AnnData(cells.X.copy(), obs=cells.obs.copy(), var=cells.var.copy())
        out.obs["perturbation"] = list(perturbations)
        return out


@pytest.fixture
def split(tiny_adata):
    rng = np.random.default_rng(1)
    test = rng.random(tiny_adata.n_obs) < 0.4
    return tiny_adata[~test].copy(), tiny_adata[test].copy()


def _counts(adata):
    return adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)


def test_written_cells(split, tmp_path):
    """Same labels and cell numbers as the test split, integer counts, X = log1p(1e4 x / sum x), source = controls."""
    train, test = split
    model = CopyGenerator(get_registry(test))
    real, preds = evaluation_cells(model, train, test, seed=0)
    assert list(preds) == ["pertpyro", "training_mean", "shrunk_training_mean", "no_change"]
    paths = write_cell_eval_inputs(real, preds, tmp_path / "ce")
    real = ad.read_h5ad(paths["real"])
    np.testing.assert_array_equal(real.layers["counts"].toarray(), _counts(test))
    expected_sizes = test.obs["perturbation"].astype(str).value_counts().sort_index()
    controls = _counts(test)[test.obs["perturbation"].to_numpy() == "control"]
    control_rows = {row.tobytes() for row in controls.astype(np.float32)}
    for name in preds:
        pred = ad.read_h5ad(paths[name])
        counts = pred.layers["counts"].toarray()
        assert np.array_equal(counts, np.round(counts))
        assert (counts >= 0).all()
        sizes = pred.obs["perturbation"].astype(str).value_counts().sort_index()
        pd.testing.assert_series_equal(sizes, expected_sizes, check_names=False)
        lognorm = np.log1p(1e4 * counts / counts.sum(1, keepdims=True))
        np.testing.assert_allclose(pred.X.toarray(), lognorm, rtol=1e-5, atol=1e-5)
        if name in ("pertpyro", "no_change"):  # copies of held-out control cells, nothing else
            assert {row.tobytes() for row in counts} <= control_rows
    assert all(set(call) == set(test.obs["perturbation"].astype(str)) for call in model.calls)


def test_baseline_cells_carry_the_baseline_shift():
    """Thinning / topping up moves the mean log1p expression of the source cells by the asked-for shift."""
    rng = np.random.default_rng(0)
    rates = rng.gamma(1.0, 3.0, size=60)  # sparse and well-detected genes
    counts = rng.poisson(rates * rng.lognormal(0, 0.3, size=(2000, 1))).astype(float)
    shifts = rng.normal(0, 0.5, size=(2, 60))
    ratio = shift_ratios(counts, shifts, seed=0)
    depth = counts.sum(1, keepdims=True)
    drawn = shifted_counts(counts, ratio[0], depth * counts.sum(0) / depth.sum(), np.random.default_rng(5))
    base = np.log1p(1e4 * counts / depth).mean(0)
    moved = np.log1p(1e4 * drawn / drawn.sum(1, keepdims=True)).mean(0)
    reachable = base + shifts[0] > 0.05  # a gene cannot go below no expression at all
    # 2000 cells: a gene's mean moves by ~0.03 from draw to draw (largest of 58 genes: ~0.08); the closed-form
    # start ratio alone (no bisection) misses by up to 0.65.
    np.testing.assert_allclose((moved - base)[reachable], shifts[0][reachable], atol=0.1)
    assert np.array_equal(drawn, np.round(drawn))


def test_training_mean_cells_recover_its_shift(split):
    train, test = split
    _, preds = evaluation_cells(None, train, test, baselines=("training_mean",), seed=0)
    pred = preds["training_mean"]
    labels = pred.obs["perturbation"].astype(str).to_numpy()
    shift = pred.X[labels == "A"].mean(0) - pred.X[labels == "control"].mean(0)
    wanted = training_mean(train, ["A"]).loc["A"].to_numpy()
    assert wanted[0] < -0.5
    assert shift[0] < -0.5


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("celleval")
    cfg = {
        "name": "tiny",
        "output": str(tmp / "run"),
        "data": {
            "dataset": "simulate",
            "simulate": {"n_cells": 600, "n_genes": 30, "n_targets": 3, "n_combinations": 0, "seed": 0},
            "batch_key": "batch",
        },
        "model": {"latent_dim": 2, "n_hidden": 16},
        "train": {"max_epochs": 2, "batch_size": 128, "progress_bar": False},
        "evaluate": {"n_samples": 3, "iwelbo_particles": 2, "n_splits": 1},
    }
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert cli.main(["fit", str(path)]) == 0
    return tmp / "run"


def test_without_cell_eval_the_section_says_how_to_get_it(split, monkeypatch, tmp_path):
    train, test = split
    monkeypatch.setattr(_celleval, "cell_eval_installed", lambda: False)
    table, text = _celleval.cell_eval_report(CopyGenerator(get_registry(test)), train, test, tmp_path / "ce")
    assert table is None
    assert "skipped, cell-eval is not installed" in text
    assert "pip install 'pertpyro[eval]'" in text
    assert not (tmp_path / "ce").exists()


def test_evaluate_runs_cell_eval(run, capsys):
    pytest.importorskip("cell_eval")
    assert cli.main(["evaluate", str(run), "--cell-eval"]) == 0
    out = capsys.readouterr().out
    table = pd.read_csv(run / "cell_eval" / "cell_eval.csv")
    assert list(table["method"]) == ["pertpyro", "training_mean", "shrunk_training_mean", "no_change"]
    assert {"de_nsig_counts_real", "de_nsig_counts_pred", "pearson_delta", "overlap_at_N"} <= set(table.columns)
    assert (table["de_nsig_counts_real"] == table["de_nsig_counts_real"].iloc[0]).all()  # one real DE for all
    assert "cell-eval (full profile" in out
    assert "| pertpyro |" in out
    assert "cell-eval (full profile" in (run / "metrics.md").read_text()
    assert (run / "cell_eval" / "real.h5ad").exists()
    assert (run / "cell_eval" / "pred_pertpyro.h5ad").exists()
