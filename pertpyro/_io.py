"""Files that are either complete or absent, and model files that load without running code from them.

A saved model is two files in its folder:

* ``model.pt``: the program's and the guide's state dicts, plain tensors only, written by ``torch.save`` and read
  back with ``torch.load(weights_only=True)`` (the restricted unpickler: no code from the file runs);
* ``settings.json``: everything else (constructor settings, registry, training settings, history, calibration).

Every file is written to a temporary file in the same folder and moved into place with :func:`os.replace`, so a
crash mid-write leaves the previous file (or none), never half of one. A file that is truncated or damaged anyway
(copied halfway, edited by hand) raises :class:`ModelFileError` naming it, not a low-level decoding error.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import pandas as pd
import torch

TENSORS_FILE = "model.pt"
SETTINGS_FILE = "settings.json"
FORMAT_VERSION = 2


class ModelFileError(ValueError):
    """A saved model's file is damaged or incomplete."""

    def __init__(self, path: str | Path, reason: str = "") -> None:
        self.path = Path(path)
        super().__init__(f"model file damaged or incomplete: {path}" + (f" ({reason})" if reason else ""))


@contextmanager
def _atomic(path: str | Path, mode: str) -> Iterator[IO[Any]]:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the whole new one."""
    with _atomic(path, "w") as handle:
        handle.write(text)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write(handle)`` on a temporary binary file beside ``path``, then move it onto ``path``."""
    with _atomic(path, "wb") as handle:
        write(handle)


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save(obj, path)``, atomically."""
    atomic_write(path, lambda handle: torch.save(obj, handle))


def _jsonable(value: Any) -> Any:
    """Settings as JSON: DataFrames (a GRN prior) and tuples get a tagged form that :func:`_unjsonable` reverses."""
    if isinstance(value, pd.DataFrame):
        return {"__dataframe__": json.loads(value.to_json(orient="split"))}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return value.item()
    return value


def _unjsonable(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__dataframe__"}:
            split = value["__dataframe__"]
            return pd.DataFrame(split["data"], index=split["index"], columns=split["columns"])
        return {k: _unjsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unjsonable(v) for v in value]
    return value


def write_model_files(folder: str | Path, tensors: dict[str, dict[str, torch.Tensor]], settings: dict) -> None:
    """Write ``model.pt`` (state dicts of plain tensors) and ``settings.json`` into ``folder``, each atomically."""
    folder = Path(folder)
    plain = {name: {k: v.detach().cpu().clone() for k, v in state.items()} for name, state in tensors.items()}
    atomic_torch_save(plain, folder / TENSORS_FILE)
    text = json.dumps({"format": FORMAT_VERSION, **_jsonable(settings)}, indent=1, allow_nan=True)
    atomic_write_text(folder / SETTINGS_FILE, text)


def read_model_files(folder: str | Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    """Read what :func:`write_model_files` wrote; no code from the files runs.

    Raises
    ------
    FileNotFoundError
        No ``model.pt`` in ``folder``.
    ModelFileError
        A file is truncated, damaged, or not what :func:`write_model_files` writes.
    """
    folder = Path(folder)
    tensor_path, settings_path = folder / TENSORS_FILE, folder / SETTINGS_FILE
    if not tensor_path.exists():
        raise FileNotFoundError(f"No saved pertpyro model at {tensor_path}.")
    try:
        tensors = torch.load(tensor_path, map_location="cpu", weights_only=True)
    except Exception as err:  # EOFError, RuntimeError, UnpicklingError, ...: all mean damaged
        raise ModelFileError(tensor_path, type(err).__name__) from err
    if not settings_path.exists():
        return _legacy(tensors, tensor_path)
    if not isinstance(tensors, dict) or not all(
        isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())
        for state in tensors.values()
    ):
        raise ModelFileError(tensor_path, "not a dict of state dicts")
    try:
        settings = json.loads(settings_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelFileError(settings_path, type(err).__name__) from err
    if not isinstance(settings, dict) or settings.get("format") != FORMAT_VERSION:
        raise ModelFileError(settings_path, "not a pertpyro settings file of this format")
    return tensors, _unjsonable(settings)


_LEGACY_KEYS = ("init_kwargs", "registry", "history", "is_trained", "interval_calibration", "train_settings", "version")


def _legacy(state: Any, path: Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    """Tensors and settings of a ``model.pt`` written by pertpyro before ``settings.json`` existed.

    That file was one dict of settings and state dicts; its settings held only plain values, so the same
    restricted unpickler (``weights_only=True``) reads it without running code.
    """
    if not isinstance(state, dict) or not {"program", "guide", "init_kwargs", "registry"} <= set(state):
        raise ModelFileError(path.parent / SETTINGS_FILE, "missing")
    return {"program": state["program"], "guide": state["guide"]}, {k: state.get(k) for k in _LEGACY_KEYS}
