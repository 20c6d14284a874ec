"""Run folders: refuse to overwrite, overwrite cleanly, record and check the data, load_run, Ctrl-C in the CLI."""

import os
import signal

import pandas as pd
import pytest
import yaml

import pertpyro
import pertpyro._config
from pertpyro import cli, runs


@pytest.fixture
def config(tmp_path):
    cfg = {
        "name": "tiny",
        "output": str(tmp_path / "run"),
        "data": {
            "dataset": "simulate",
            "simulate": {"n_cells": 300, "n_genes": 15, "n_targets": 2, "n_combinations": 0, "n_truth_cells": 0},
            "batch_key": "batch",
        },
        "model": {"latent_dim": 2, "n_hidden": 8},
        "train": {"max_epochs": 2, "batch_size": 128, "progress_bar": False},
        "evaluate": {"n_samples": 2, "iwelbo_particles": 2},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _set_simulate_seed(config, seed):
    cfg = yaml.safe_load(config.read_text())
    cfg["data"]["simulate"]["n_cells"] = 300 + seed
    config.write_text(yaml.safe_dump(cfg))


def test_fit_refuses_a_folder_with_a_run_and_overwrite_clears_it(config, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["fit", str(config)]) == 0
    for name in ("config.yaml", "split.csv", "data.json", "model.pt", "settings.json"):
        assert (run / name).exists(), name
    assert (run / "checkpoints" / "last.ckpt").exists()
    assert (run / "checkpoints" / "best.ckpt").exists()
    (run / "metrics.md").write_text("old metrics")
    (run / "notes.txt").write_text("the user's own file")
    capsys.readouterr()
    assert cli.main(["fit", str(config)]) == 2
    err = capsys.readouterr().err
    assert "holds a run already" in err
    assert err.count("\n") == 1
    assert (run / "metrics.md").exists()
    assert cli.main(["fit", str(config), "--overwrite"]) == 0
    assert not (run / "metrics.md").exists()  # the old run's derived files are gone
    assert (run / "notes.txt").exists()  # files a run does not write stay


def test_evaluate_and_query_refuse_changed_data(config, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["fit", str(config)]) == 0
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["data"]["simulate"]["n_cells"] = 301  # the data behind the run changed
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    capsys.readouterr()
    assert cli.main(["evaluate", str(run)]) == 2
    assert "changed since it was fitted" in capsys.readouterr().err
    assert cli.main(["query", str(run), "--do", "perturbation=G0000"]) == 2
    assert "changed since it was fitted" in capsys.readouterr().err


def test_query_out_into_missing_folder(config, tmp_path, capsys):
    assert cli.main(["fit", str(config)]) == 0
    capsys.readouterr()
    out = tmp_path / "missing" / "q.csv"
    assert cli.main(["query", str(tmp_path / "run"), "--do", "perturbation=G0000", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err
    assert err.count("\n") == 1


def test_load_run(config, tmp_path):
    run_dir = tmp_path / "run"
    assert cli.main(["fit", str(config)]) == 0
    run = pertpyro.load_run(run_dir)
    model, adata, cfg = run
    assert cfg["name"] == "tiny"
    assert adata.n_obs == 300
    assert model.is_trained
    parts = run.subsets()
    assert sum(p.n_obs for p in parts.values()) == adata.n_obs
    assert model.adata.n_obs == parts["train"].n_obs
    with pytest.raises(runs.RunError, match="holds no run"):
        pertpyro.load_run(tmp_path)


def test_fingerprint_sees_renamed_cells(tiny_adata):
    before = runs.fingerprint(tiny_adata)
    other = tiny_adata.copy()
    other.obs_names = [f"x{i}" for i in range(other.n_obs)]
    assert runs.fingerprint(other) != before
    assert runs.fingerprint(tiny_adata.copy()) == before


def test_resume_continues_from_the_checkpoint(config, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["fit", str(config), "--resume"]) == 2  # nothing to resume yet
    assert "Nothing to resume" in capsys.readouterr().err
    assert cli.main(["fit", str(config)]) == 0
    (run / "model.pt").unlink()  # as if killed before saving
    assert cli.main(["fit", str(config), "--resume", "--max-epochs", "3"]) == 0
    model = pertpyro.load_run(run).model
    assert list(model.history_["epoch"]) == [0, 1, 2]
    cfg = yaml.safe_load(config.read_text())
    cfg["model"]["latent_dim"] = 3
    config.write_text(yaml.safe_dump(cfg))
    capsys.readouterr()
    assert cli.main(["fit", str(config), "--resume"]) == 2
    assert "differ from the run's" in capsys.readouterr().err


def test_ctrl_c_in_fit_saves_and_exits_130(config, tmp_path, capsys, monkeypatch):
    from pertpyro.inference import SVIModule

    def press_ctrl_c(self):
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(SVIModule, "on_train_epoch_end", press_ctrl_c)
    cfg = yaml.safe_load(config.read_text())
    cfg["train"]["max_epochs"] = 20
    config.write_text(yaml.safe_dump(cfg))
    assert cli.main(["fit", str(config)]) == 130
    err = capsys.readouterr().err
    assert f"saved the model trained so far to {tmp_path / 'run'}" in err
    model = pertpyro.load_run(tmp_path / "run").model
    assert len(model.history_) == 1
    assert isinstance(model.ate(n_samples=2), pd.DataFrame)


def test_load_data_runs_qc_when_the_config_asks(config):
    cfg = pertpyro._config.validate_config(yaml.safe_load(config.read_text()))
    cfg["data"]["simulate"].update(doublet_rate=0.1)
    cfg["qc"]["run"], cfg["qc"]["doublets"] = True, False
    adata = runs.load_data(cfg)
    assert adata.obs["artifact"].dtype == bool  # pp.qc wrote its labels and their reasons
    assert {"artifact_reason", "total_counts"} <= set(adata.obs.columns)
