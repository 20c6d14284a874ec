"""Plots: figures come back, files are written, the right genes are picked, bad input is refused."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from pertpyro import plotting


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture
def ate():
    """Two perturbations x six genes; A hits g1 (+2, credible) and g2 (-1.5, credible), B hits g3 (+0.8, not)."""
    means = {
        "A": {"g0": 0.01, "g1": 2.0, "g2": -1.5, "g3": 0.1, "g4": -0.05, "g5": 0.3},
        "B": {"g0": -0.02, "g1": 0.05, "g2": 0.1, "g3": 0.8, "g4": -0.6, "g5": 0.0},
    }
    half = {"A": 0.2, "B": 1.0}
    rows = [
        {"perturbation": p, "gene": g, "mean": m, "lower": m - half[p], "upper": m + half[p]}
        for p, genes in means.items()
        for g, m in genes.items()
    ]
    return pd.DataFrame(rows)


@pytest.fixture
def history():
    epochs = np.arange(12)
    return pd.DataFrame(
        {"epoch": epochs, "train_loss": 200 - 5 * np.sqrt(epochs), "val_loss": 199 - 4 * np.sqrt(epochs)}
    )


def _labels(ticks):
    return [t.get_text() for t in ticks]


def test_training_curves(history, tmp_path):
    fig = plotting.training_curves(history, save=tmp_path / "sub" / "training.png")
    assert isinstance(fig, Figure)
    assert (tmp_path / "sub" / "training.png").stat().st_size > 0
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.get_lines()][:2] == ["train", "validation"]
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), history["train_loss"])


def test_training_curves_without_validation_and_on_given_axes(history):
    fig, ax = plt.subplots()
    out = plotting.training_curves(history.drop(columns="val_loss"), ax=ax, log_scale=True)
    assert out is fig
    assert len(ax.get_lines()) == 1
    assert ax.get_yscale() == "log"


def test_training_curves_accepts_model_like_objects(history):
    class Trained:
        history_ = history

    class Untrained:
        history_ = None

    assert isinstance(plotting.training_curves(Trained()), Figure)
    with pytest.raises(ValueError, match="no training history"):
        plotting.training_curves(Untrained())


def test_training_curves_missing_column(history):
    with pytest.raises(ValueError, match="train_loss"):
        plotting.training_curves(history.drop(columns="train_loss"))


def test_dotplot_picks_top_genes_by_max_abs_mean(ate, tmp_path):
    fig = plotting.ate_dotplot(ate, top_n=3, save=tmp_path / "dot.pdf")
    assert isinstance(fig, Figure)
    assert (tmp_path / "dot.pdf").stat().st_size > 0
    ax = fig.axes[0]
    assert _labels(ax.get_xticklabels()) == ["g1", "g2", "g3"]
    assert _labels(ax.get_yticklabels()) == ["A", "B"]


def test_dotplot_colour_scale_is_centred(ate):
    fig = plotting.ate_dotplot(ate, top_n=4)
    norm = fig.axes[0].collections[0].norm
    assert norm.vmin == pytest.approx(-2.0)
    assert norm.vmax == pytest.approx(2.0)


def test_dotplot_marks_credible_effects(ate):
    fig = plotting.ate_dotplot(ate, genes=["g1", "g3"])
    not_credible, credible = fig.axes[0].collections[:2]
    # credible: A-g1 only (B-g3 has mean 0.8 but half-width 1); the rest are small dots
    np.testing.assert_allclose(credible.get_offsets(), [[0, 0]])
    assert len(not_credible.get_offsets()) == 3
    assert credible.get_sizes()[0] > not_credible.get_sizes()[0]


def test_dotplot_given_genes_and_perturbations_keep_order(ate):
    fig = plotting.ate_dotplot(ate, genes=["g5", "g0"], perturbations=["B", "A"])
    ax = fig.axes[0]
    assert _labels(ax.get_xticklabels()) == ["g5", "g0"]
    assert _labels(ax.get_yticklabels()) == ["B", "A"]


def test_dotplot_top_n_restricted_to_chosen_perturbation(ate):
    fig = plotting.ate_dotplot(ate, top_n=2, perturbations="B")
    ax = fig.axes[0]
    assert _labels(ax.get_xticklabels()) == ["g3", "g4"]
    assert _labels(ax.get_yticklabels()) == ["B"]


def test_dotplot_errors(ate):
    with pytest.raises(ValueError, match="missing columns"):
        plotting.ate_dotplot(ate.drop(columns=["lower"]))
    with pytest.raises(ValueError, match="Unknown perturbations"):
        plotting.ate_dotplot(ate, perturbations=["C"])
    with pytest.raises(ValueError, match="not in the ATE table"):
        plotting.ate_dotplot(ate, genes=["g1", "nope"])
    with pytest.raises(ValueError, match="top_n"):
        plotting.ate_dotplot(ate, top_n=0)
    with pytest.raises(ValueError, match="empty"):
        plotting.ate_dotplot(ate.iloc[:0])
    with pytest.raises(ValueError, match="several rows"):
        plotting.ate_dotplot(pd.concat([ate, ate.iloc[:1]]))


def test_forest(ate, tmp_path):
    fig = plotting.ate_forest(ate, "A", top_n=3, save=tmp_path / "forest.png")
    assert isinstance(fig, Figure)
    assert (tmp_path / "forest.png").stat().st_size > 0
    ax = fig.axes[0]
    assert _labels(ax.get_yticklabels()) == ["g1", "g2", "g5"]  # strongest first, drawn on top
    assert ax.get_ylim()[0] > ax.get_ylim()[1]
    intervals = ax.collections[0].get_segments()
    np.testing.assert_allclose([seg[:, 0] for seg in intervals], [[1.8, 2.2], [-1.7, -1.3], [0.1, 0.5]])


def test_forest_errors(ate):
    with pytest.raises(ValueError, match="Unknown perturbations"):
        plotting.ate_forest(ate, "C")
    with pytest.raises(ValueError, match="missing columns"):
        plotting.ate_forest(ate.drop(columns=["upper"]), "A")


def test_volcano(ate, tmp_path):
    fig = plotting.volcano(ate, "A", save=tmp_path / "volcano.svg")
    assert isinstance(fig, Figure)
    assert (tmp_path / "volcano.svg").stat().st_size > 0
    ax = fig.axes[0]
    not_credible, credible = ax.collections[:2]
    # half-width 0.2: score = |mean| / 0.2; credible where > 1 (g1, g2, g5)
    np.testing.assert_allclose(sorted(credible.get_offsets()[:, 1]), [1.5, 7.5, 10.0])
    assert len(not_credible.get_offsets()) == 3
    assert sorted(t.get_text() for t in ax.texts) == ["g1", "g2", "g5"]


def test_volcano_zero_width_interval_is_skipped(ate):
    ate = ate.copy()
    ate.loc[0, ["lower", "upper"]] = ate.loc[0, "mean"]
    fig = plotting.volcano(ate, "A", label_top=0)
    assert not fig.axes[0].texts


def test_volcano_errors(ate):
    with pytest.raises(ValueError, match="Unknown perturbations"):
        plotting.volcano(ate, "Z")
    with pytest.raises(ValueError, match="mean"):
        plotting.volcano(ate.drop(columns=["mean"]), "A")
    with pytest.raises(TypeError, match="DataFrame"):
        plotting.volcano(ate.to_dict(), "A")


def test_grn_graph_draws_the_most_probable_edges(tmp_path):
    edges = pd.DataFrame(
        {
            "source": ["STAT1", "STAT1", "IRF1", "JAK2", "JAK2"],
            "target": ["IRF1", "PSMB9", "GBP1", "STAT1", "CD274"],
            "prob": [0.95, 0.9, 0.8, 0.7, 0.2],
            "weight": [1.0, 0.5, -0.7, 0.8, 0.3],
        }
    )
    fig = plotting.grn_graph(edges, top_n=3, save=tmp_path / "grn.png")
    assert (tmp_path / "grn.png").stat().st_size > 0
    ax = fig.axes[0]
    labels = {t.get_text() for t in ax.texts if t.get_text()}
    assert labels == {"STAT1", "IRF1", "PSMB9", "GBP1"}  # the top 3 edges' nodes only
    arrows = [t for t in ax.texts if not t.get_text()]
    assert len(arrows) == 3
    assert "3 edges" in ax.get_title()
    empty = plotting.grn_graph(edges, min_prob=0.99)
    assert "no edge" in empty.axes[0].get_title()


def test_grn_graph_errors():
    with pytest.raises(ValueError, match="prob"):
        plotting.grn_graph(pd.DataFrame({"source": ["a"], "target": ["b"], "weight": [1.0]}))
    edges = pd.DataFrame({"source": ["a"], "target": ["b"], "prob": [0.9], "weight": [1.0]})
    with pytest.raises(ValueError, match="top_n"):
        plotting.grn_graph(edges, top_n=0)
    with pytest.raises(ValueError, match="min_prob"):
        plotting.grn_graph(edges, min_prob=2.0)


def test_null_qq_draws_each_series_and_refuses_bad_pvalues(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "qq.png"
    fig = plotting.null_qq({"raw": rng.random(300) ** 2, "calibrated": rng.random(300)}, save=path)
    assert path.exists()
    assert len(fig.axes[0].collections) == 2  # one scatter per series
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        plotting.null_qq(np.array([0.5, 1.5]))


def test_efficacy_cells_draws_each_cell_per_panel(tmp_path):
    import pertpyro

    adata = pertpyro.datasets.simulate(
        n_cells=300, n_genes=20, n_targets=2, n_combinations=0, seed=0, n_truth_cells=0, n_guides=2
    )
    pertpyro.setup_anndata(adata, guide_key="guide")
    model = pertpyro.PerturbationModel(adata, latent_dim=2, n_hidden=8, seed=0)
    model.train(max_epochs=1, batch_size=150, progress_bar=False, early_stopping=False, seed=0)
    n_cells = int((adata.obs["perturbation"] == "G0001").sum())
    fig = plotting.efficacy_cells(model, "G0001", n_samples=2, save=tmp_path / "efficacy.png")
    assert (tmp_path / "efficacy.png").exists()
    axes = fig.axes
    assert len(axes) == 2  # depth, and the target gene's own expression (G0001 is a measured gene)
    for ax in axes:
        assert sum(len(c.get_offsets()) for c in ax.collections) == n_cells
        assert len(ax.collections) == 2  # one colour per guide
    with pytest.raises(ValueError, match="No cell is labelled"):
        plotting.efficacy_cells(model, "G0009")
