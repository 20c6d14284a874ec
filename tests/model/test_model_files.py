"""Model files: tensors only (no code runs on load), atomic writes, clear errors on damaged files."""

import json
import pickle

import numpy as np
import pandas as pd
import pytest
import torch

import pertpyro
from pertpyro._io import ModelFileError, atomic_write_text


@pytest.fixture
def saved(tiny_adata, tmp_path):
    model = pertpyro.PerturbationModel(tiny_adata, latent_dim=2, n_hidden=8)
    model.train(max_epochs=2, batch_size=120, progress_bar=False)
    model.save(tmp_path / "run")
    return model, tmp_path / "run"


def test_round_trip_identical_and_plain_files(saved, tiny_adata):
    model, path = saved
    settings = json.loads((path / "settings.json").read_text())
    assert settings["init_kwargs"]["latent_dim"] == 2
    state = torch.load(path / "model.pt", weights_only=True)
    assert set(state) == {"program", "guide"}
    loaded = pertpyro.PerturbationModel.load(path, tiny_adata)
    pd.testing.assert_frame_equal(model.ate(["A"], n_samples=3), loaded.ate(["A"], n_samples=3))
    pd.testing.assert_frame_equal(model.history_, loaded.history_)
    assert not list(path.glob("*.tmp"))  # no temporaries left behind


@pytest.mark.parametrize("keep", [0, 100, 0.5])
def test_truncated_tensor_file_is_reported(saved, tiny_adata, keep):
    _, path = saved
    data = (path / "model.pt").read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else keep
    (path / "model.pt").write_bytes(data[:n])
    with pytest.raises(ModelFileError, match="model file damaged or incomplete: .*model.pt"):
        pertpyro.PerturbationModel.load(path, tiny_adata)


@pytest.mark.parametrize("text", [b'{"format": 2, "init', b"\xff\xfe\x00garbage", b"[1, 2]", b"{}"])
def test_damaged_settings_are_reported(saved, tiny_adata, text):
    _, path = saved
    (path / "settings.json").write_bytes(text)
    with pytest.raises(ValueError, match="model file damaged or incomplete: .*settings.json"):
        pertpyro.PerturbationModel.load(path, tiny_adata)


class _Boom:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_load_never_runs_code_from_the_file(saved, tiny_adata, tmp_path, monkeypatch):
    _, path = saved
    monkeypatch.chdir(tmp_path)
    with open(path / "model.pt", "wb") as handle:
        pickle.dump({"program": _Boom()}, handle)
    with pytest.raises(ModelFileError):
        pertpyro.PerturbationModel.load(path, tiny_adata)
    assert not (tmp_path / "PWNED").exists()


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    target = tmp_path / "f.txt"
    atomic_write_text(target, "old")

    def failing_write(path, text):
        from pertpyro import _io

        with _io._atomic(path, "w") as handle:
            handle.write(text[:2])
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        failing_write(target, "new content")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_grn_prior_frame_survives_json(tiny_adata, tmp_path):
    from pertpyro._io import _jsonable, _unjsonable

    frame = pd.DataFrame({"source": ["A"], "target": ["g1"]})
    back = _unjsonable(json.loads(json.dumps(_jsonable({"grn_prior": frame, "x": np.float32(1.5)}))))
    pd.testing.assert_frame_equal(back["grn_prior"], frame)
    assert back["x"] == 1.5


def test_models_saved_before_settings_json_still_load(saved, tiny_adata):
    model, path = saved
    (path / "settings.json").unlink()
    legacy = {
        "program": model.program.state_dict(),
        "guide": model.guide.state_dict(),
        "init_kwargs": model.init_kwargs,
        "registry": model.registry.to_dict(),
        "history": model.history_.to_dict(orient="list"),
        "is_trained": True,
        "interval_calibration": None,
        "train_settings": model.train_settings_,
        "version": "0.1.0",
    }
    torch.save(legacy, path / "model.pt")
    loaded = pertpyro.PerturbationModel.load(path, tiny_adata)
    pd.testing.assert_frame_equal(model.ate(["A"], n_samples=3), loaded.ate(["A"], n_samples=3))
