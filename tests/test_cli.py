"""The command line: fit -> evaluate -> query on a tiny simulated screen."""

import pandas as pd
import pytest
import yaml

from pertpyro import cli


@pytest.fixture
def config(tmp_path):
    cfg = {
        "name": "tiny",
        "output": str(tmp_path / "run"),
        "data": {
            "dataset": "simulate",
            "simulate": {
                "n_cells": 600,
                "n_genes": 30,
                "n_targets": 3,
                "n_combinations": 1,
                "n_truth_cells": 0,
                "seed": 0,
            },
            "batch_key": "batch",
        },
        "model": {"latent_dim": 2, "n_hidden": 16},
        "train": {"max_epochs": 2, "batch_size": 128, "progress_bar": False},
        "evaluate": {"n_samples": 3, "iwelbo_particles": 2, "n_splits": 2},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_fit_evaluate_query(config, tmp_path, capsys):
    assert cli.main(["fit", str(config)]) == 0
    run = tmp_path / "run"
    for name in ("model.pt", "split.csv", "config.yaml"):
        assert (run / name).exists()
    assert (run / "logs" / "metrics.csv").exists()  # Lightning's CSV log of the losses
    assert cli.main(["evaluate", str(run)]) == 0
    table = pd.read_csv(run / "metrics.csv")
    assert table["method"].iloc[0] == "PerturbationModel"
    assert {"training_mean", "no_change"} <= set(table["method"])
    assert table.loc[0, "iwelbo"] < 0
    per_split, paired = pd.read_csv(run / "splits.csv"), pd.read_csv(run / "paired.csv")  # the run's split + 1 refit
    assert sorted(per_split["split"].unique()) == [0, 1]
    assert set(paired["baseline_method"]) == {"training_mean", "shrunk_training_mean"}
    assert (paired["n_splits"] == 2).all()
    assert (paired["lower"] <= paired["upper"]).all()
    assert "over 2 random splits" in (run / "metrics.md").read_text()
    coverage = pd.read_csv(run / "calibration.csv")  # coverage of the test cells' shifts (no truth: n_truth_cells=0)
    assert set(coverage["reference"]) == {"heldout"}
    assert coverage["coverage"].between(0, 1).all()
    out = tmp_path / "q.csv"
    assert cli.main(["query", str(run), "--do", "perturbation=G0000", "--out", str(out)]) == 0
    q = pd.read_csv(out)
    assert list(q.columns) == ["perturbation", "gene", "mean", "lower", "upper"]
    assert (q["lower"] <= q["upper"]).all()


def test_fit_with_calibration(config, tmp_path, capsys):
    """``calibrate: {run: true}`` fits the interval calibration after training; evaluate scores both intervals."""
    cfg = yaml.safe_load(config.read_text())
    cfg["calibrate"] = {"run": True, "n_samples": 3}
    cfg["evaluate"]["n_splits"] = 1
    config.write_text(yaml.safe_dump(cfg))
    assert cli.main(["fit", str(config)]) == 0
    assert "Calibrated the intervals on a replica screen" in capsys.readouterr().out
    run = tmp_path / "run"
    assert cli.main(["evaluate", str(run)]) == 0
    coverage = pd.read_csv(run / "calibration.csv")
    assert set(coverage["intervals"]) == {"raw", "calibrated"}
    wide = coverage.pivot_table(index="level", columns="intervals", values="mean_width")
    assert (wide["calibrated"] != wide["raw"]).all()


def test_fit_evaluate_with_negative_controls(config, tmp_path, capsys):
    """``data.negative_controls``: null pseudo-targets are fitted, kept out of the metrics, reported as controls."""
    cfg = yaml.safe_load(config.read_text())
    cfg["data"]["negative_controls"] = 2
    cfg["evaluate"]["n_splits"] = 1
    config.write_text(yaml.safe_dump(cfg))
    assert cli.main(["fit", str(config)]) == 0
    run = tmp_path / "run"
    loaded = cli.load_config(config)
    plain_split = cli.make_split(cli.load_data(loaded, negative_controls=False), loaded)
    pd.testing.assert_series_equal(pd.read_csv(run / "split.csv", index_col=0)["split"], plain_split.rename("split"))
    assert cli.main(["evaluate", str(run)]) == 0
    metrics = pd.read_csv(run / "metrics.csv")
    assert (metrics["n_perturbations"] <= 4).all()  # 3 targets and 1 combination; the nulls are not knockouts
    controls = pd.read_csv(run / "controls.csv")
    negative = controls[controls["kind"] == "negative"]
    assert set(negative["label"]) == {"null_1", "null_2", "all nulls"}
    assert negative.filter(like="excludes 0").stack().between(0, 1).all()
    assert (run / "controls_qq.png").exists()
    assert "Controls: null pseudo-targets" in (run / "metrics.md").read_text()


def test_bad_config_key_is_rejected(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"train": {"max_epoch": 3}}))
    assert cli.main(["fit", str(path)]) == 2
    assert "Unknown config key 'train.max_epoch'" in capsys.readouterr().err


def test_query_rejects_unknown_site(config, tmp_path):
    cli.main(["fit", str(config)])
    assert cli.main(["query", str(tmp_path / "run"), "--do", "artifact=0"]) == 2


def test_missing_config_file(tmp_path, capsys):
    assert cli.main(["fit", str(tmp_path / "nope.yaml")]) == 2
    assert "No config file" in capsys.readouterr().err
