"""Config schema: every shipped config validates; bad configs give one line and exit 2, no traceback."""

import inspect
from pathlib import Path

import pytest
import yaml

from pertpyro import cli
from pertpyro._config import ConfigError, ModelSection, TrainSection, read_config, validate_config

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    config = read_config(path)
    assert config["train"]["max_epochs"] >= 1
    assert config["output"]


def test_model_and_train_sections_follow_the_signatures():
    from pertpyro import PerturbationModel

    def keywords(fn, skip=()):
        params = inspect.signature(fn).parameters.values()
        return {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY and p.name not in skip}

    model = keywords(PerturbationModel.__init__)
    train = keywords(PerturbationModel.train, skip=("validation_adata", "log_dir", "checkpoint_dir", "ckpt_path"))
    assert set(ModelSection.model_fields) == set(model)
    assert set(TrainSection.model_fields) == set(train)
    assert ModelSection().model_dump() == model
    assert TrainSection().model_dump() == train


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"train": {"max_epochs": "ten"}}, "train.max_epochs"),
        ({"train": {"max_epochs": -1}}, "train.max_epochs"),
        ({"train": {"max_epochs": 0}}, "train.max_epochs"),
        ({"train": {"lr": 0}}, "train.lr"),
        ({"model": {"latent_dim": 2.5}}, "model.latent_dim"),
        ({"model": {"artifacts": "maybe"}}, "model.artifacts"),
        ({"trian": {}}, "Unknown config key 'trian'"),
        ({"train": {"max_epoch": 3}}, "Unknown config key 'train.max_epoch'"),
        ({"data": {"simulate": {"n_cell": 3}}}, "data.simulate"),
        ({"split": {"kind": "sideways"}}, "split.kind"),
        ([1, 2], "mapping"),
    ],
)
def test_bad_values_are_one_line_errors(raw, message):
    with pytest.raises(ConfigError, match=message) as info:
        validate_config(raw, "c.yaml")
    assert "\n" not in str(info.value)


def test_strings_that_yaml_leaves_as_text_still_parse():
    assert validate_config({"train": {"lr": "1e-3"}})["train"]["lr"] == pytest.approx(1e-3)


def _fit_exit(tmp_path, capsys, text=None, path=None, verbose=False):
    if path is None:
        path = tmp_path / "c.yaml"
        path.write_text(text)
    code = cli.main((["-v"] if verbose else []) + ["fit", str(path)])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "text",
    [
        "train:\n  max_epochs: ten\n",
        "train:\n  max_epochs: -1\n",
        "train:\n  max_epochs: 0\n",
        "train: {max_epochs: 3\n",  # YAML syntax error
        "train:\n  max_epochs: 3\n   lr: 1\n",  # bad indentation
        "nonsense_key: 1\n",
    ],
)
def test_cli_bad_config_exit_2_one_line(tmp_path, capsys, text):
    code, err = _fit_exit(tmp_path, capsys, text)
    assert code == 2
    assert err.startswith("pertpyro: error: ")
    assert err.count("\n") == 1
    assert "Traceback" not in err


def test_cli_folder_as_config(tmp_path, capsys):
    code, err = _fit_exit(tmp_path, capsys, path=tmp_path)
    assert code == 2
    assert "is a folder" in err
    assert err.count("\n") == 1


def test_cli_verbose_shows_traceback(tmp_path, capsys):
    code, err = _fit_exit(tmp_path, capsys, "train:\n  max_epochs: ten\n", verbose=True)
    assert code == 2
    assert "Traceback" in err


def test_cli_max_epochs_flag_checked(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"output": str(tmp_path / "run")}))
    assert cli.main(["fit", str(path), "--max-epochs", "0"]) == 2
    assert "max_epochs" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
