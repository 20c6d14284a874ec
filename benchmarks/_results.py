"""Machine-readable benchmark results: one JSON file per benchmark in ``benchmarks/results/``.

Every file has the same schema, which the docs' benchmarks page renders::

    {"title": str, "command": str, "machine": str, "summary": str,
     "tables": [{"caption": str, "columns": [str, ...], "rows": [[cell, ...], ...]}
                | {"caption": str, "csv": "name.csv"}],
     "figure": "docs/figures/name.png"}            # optional

A cell is a string, a finite number, a bool or ``null``; ``csv`` is relative to ``benchmarks/results/``; ``figure``
is relative to the repository root.

Use from a benchmark script (run as ``python benchmarks/NAME.py``, so this module is importable as ``_results``)::

    from _results import table, write_result

    write_result("throughput", title="Throughput", summary="...", tables=[table("caption", ["a", "b"], rows)])

``command`` defaults to the script's own command line and ``machine`` to a description of this machine. Set the
environment variable ``PERTPYRO_RESULTS_DIR`` to write elsewhere (e.g. for a quick trial run of a script).
``python benchmarks/_results.py`` checks every result file.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
REQUIRED = ("title", "command", "machine", "summary", "tables")
OPTIONAL = ("figure",)


def command_line(argv: Sequence[str] | None = None) -> str:
    """The running script's command line, with the script path relative to the repository root."""
    argv = list(sys.argv if argv is None else argv)
    script = Path(argv[0]).resolve()
    try:
        argv[0] = script.relative_to(ROOT).as_posix()
    except ValueError:
        argv[0] = script.name
    return "python " + shlex.join(argv)


def machine_description() -> str:
    """CPU cores, memory and GPU of this machine, e.g. ``"2-core CPU, 24 GiB"``."""
    parts = [f"{os.cpu_count()}-core CPU"]
    try:
        with open("/proc/meminfo") as fh:
            kib = int(fh.readline().split()[1])
        parts.append(f"{kib / 2**20:.0f} GiB")
    except (OSError, ValueError, IndexError):
        parts.append(platform.machine())
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        parts.append(torch.cuda.get_device_name(0))
    return ", ".join(parts)


def table(caption: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], digits: int | None = None) -> dict:
    """A table entry; floats are rounded to ``digits`` decimals when given, NaN becomes ``None``."""

    def cell(value: Any) -> Any:
        if hasattr(value, "item"):  # numpy scalar
            value = value.item()
        if isinstance(value, float):
            if not math.isfinite(value):
                return None
            return round(value, digits) if digits is not None else value
        return value

    return {"caption": caption, "columns": list(columns), "rows": [[cell(v) for v in row] for row in rows]}


def frame_table(caption: str, frame: Any, digits: int | None = None) -> dict:
    """A table entry from a pandas DataFrame (its index is dropped; reset it first to keep it)."""
    return table(caption, [str(c) for c in frame.columns], frame.itertuples(index=False, name=None), digits)


def merged_rows(
    name: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    key: Sequence[str],
    results_dir: Path | str | None = None,
) -> list:
    """``rows`` added to the first table of the existing result ``name``, replacing its rows with the same ``key``.

    For a benchmark whose runs each measure one setting (e.g. a thread count): the table keeps the other settings'
    rows from earlier runs. Rows of a table with other columns are dropped.
    """
    path = _results_dir(results_dir) / f"{name}.json"
    new = [list(r) for r in rows]
    index = [list(columns).index(k) for k in key]
    keys = {tuple(r[i] for i in index) for r in new}
    old = []
    if path.is_file():
        tables = json.loads(path.read_text()).get("tables") or [{}]
        if tables[0].get("columns") == list(columns):
            old = [r for r in tables[0]["rows"] if tuple(r[i] for i in index) not in keys]
    return old + new


def _results_dir(results_dir: Path | str | None) -> Path:
    if results_dir is None:
        results_dir = os.environ.get("PERTPYRO_RESULTS_DIR", RESULTS_DIR)
    return Path(results_dir)


def _check_cell(value: Any, where: str) -> None:
    if value is None or isinstance(value, (str, bool, int)):
        return
    if isinstance(value, float) and math.isfinite(value):
        return
    raise ValueError(f"{where}: cells must be str, bool, int, finite float or None, got {value!r}")


def validate(result: dict, results_dir: Path = RESULTS_DIR) -> None:
    """Raise ``ValueError`` unless ``result`` follows the schema (csv files must exist in ``results_dir``)."""
    if not isinstance(result, dict):
        raise ValueError("a result is a JSON object")
    unknown = set(result) - set(REQUIRED) - set(OPTIONAL)
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)}; allowed: {REQUIRED + OPTIONAL}")
    for key in REQUIRED[:4]:
        if not isinstance(result.get(key), str) or not result[key].strip():
            raise ValueError(f"{key!r} must be a non-empty string")
    if "figure" in result and (not isinstance(result["figure"], str) or not (ROOT / result["figure"]).is_file()):
        raise ValueError(f"'figure' must name an existing file relative to the repository root: {result['figure']!r}")
    tables = result.get("tables")
    if not isinstance(tables, list) or not tables:
        raise ValueError("'tables' must be a non-empty list")
    for i, entry in enumerate(tables):
        where = f"tables[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("caption"), str) or not entry["caption"].strip():
            raise ValueError(f"{where} needs a non-empty 'caption'")
        if set(entry) == {"caption", "csv"}:
            if not isinstance(entry["csv"], str) or not (results_dir / entry["csv"]).is_file():
                raise ValueError(f"{where}: 'csv' must name a file in {results_dir}: {entry['csv']!r}")
            continue
        if set(entry) != {"caption", "columns", "rows"}:
            raise ValueError(f"{where} has keys {sorted(entry)}; expected caption + columns + rows, or caption + csv")
        columns, rows = entry["columns"], entry["rows"]
        if not isinstance(columns, list) or not columns or not all(isinstance(c, str) for c in columns):
            raise ValueError(f"{where}: 'columns' must be a non-empty list of strings")
        if not isinstance(rows, list):
            raise ValueError(f"{where}: 'rows' must be a list")
        for j, row in enumerate(rows):
            if not isinstance(row, list) or len(row) != len(columns):
                raise ValueError(f"{where}.rows[{j}] must be a list of {len(columns)} cells")
            for value in row:
                _check_cell(value, f"{where}.rows[{j}]")


def write_result(
    name: str,
    *,
    title: str,
    summary: str,
    tables: Sequence[dict],
    command: str | None = None,
    machine: str | None = None,
    figure: str | None = None,
    results_dir: Path | str | None = None,
) -> Path:
    """Validate a result and write it to ``results_dir / f"{name}.json"`` (sorted keys, indented); return the path.

    ``results_dir`` defaults to ``$PERTPYRO_RESULTS_DIR`` or else ``benchmarks/results``.
    """
    if not name or Path(name).name != name or name.endswith(".json"):
        raise ValueError(f"name must be a bare file stem, got {name!r}")
    results_dir = _results_dir(results_dir)
    result = {
        "title": title,
        "command": command_line() if command is None else command,
        "machine": machine_description() if machine is None else machine,
        "summary": summary,
        "tables": list(tables),
    }
    if figure is not None:
        result["figure"] = figure
    validate(result, results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{name}.json"
    path.write_text(json.dumps(result, sort_keys=True, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {path}")
    return path


def check_all(results_dir: Path = RESULTS_DIR) -> list[Path]:
    """Validate every ``*.json`` in ``results_dir`` that has a ``tables`` key; return the files checked."""
    checked = []
    for path in sorted(results_dir.glob("*.json")):
        result = json.loads(path.read_text())
        if isinstance(result, dict) and "tables" in result:
            try:
                validate(result, results_dir)
            except ValueError as err:
                raise ValueError(f"{path.name}: {err}") from err
            checked.append(path)
    return checked


if __name__ == "__main__":
    for checked in check_all():
        print(f"ok {checked.relative_to(ROOT)}")
