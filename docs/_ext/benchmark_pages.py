"""Sphinx extension: the benchmarks page, generated from the recorded results in ``benchmarks/results/*.json``.

Every JSON file there with a ``"tables"`` key is one recorded benchmark::

    {"title": "Throughput", "command": "python benchmarks/throughput.py --epochs 7", "machine": "2-core CPU",
     "summary": "One paragraph: what is measured and what the tables show.",
     "tables": [{"caption": "...", "columns": ["a", "b"], "rows": [["x", 1.23]]},
                {"caption": "...", "csv": "scaling.csv"}],
     "figure": "docs/figures/scaling.png"}

``csv`` is a path relative to ``benchmarks/results/``, ``figure`` (optional) one relative to the repository root.
At ``builder-inited`` the files are read in name order and ``benchmarks.md`` is written into the source directory
(a generated file: it is not committed). A malformed file raises :class:`BenchmarkResultError`, which fails the build.
"""

from __future__ import annotations

import csv
import json
import os
from numbers import Real
from pathlib import Path
from typing import Any

PAGE_NAME = "benchmarks.md"
REQUIRED_KEYS = {"title": str, "command": str, "machine": str, "summary": str, "tables": list}
OPTIONAL_KEYS = {"figure": str}
INTRO = (
    "Generated at build time from the result files in `benchmarks/results/`: every number below is quoted from a "
    "recorded run, with the command that produced it and the machine it ran on."
)


class BenchmarkResultError(ValueError):
    """A result file does not follow the schema of the benchmark pages."""


def _fail(path: Path, message: str) -> BenchmarkResultError:
    return BenchmarkResultError(f"{path}: {message}")


def _check_cell(path: Path, where: str, value: Any) -> None:
    if value is not None and not isinstance(value, str | Real):
        raise _fail(path, f"{where}: a cell must be a string, a number or null, got {type(value).__name__}")


def _read_csv(path: Path, results_dir: Path, name: Any, where: str) -> tuple[list[str], list[list[Any]]]:
    if not isinstance(name, str) or not name:
        raise _fail(path, f"{where}: 'csv' must be a non-empty path relative to {results_dir}")
    csv_path = (results_dir / name).resolve()
    if not csv_path.is_file():
        raise _fail(path, f"{where}: csv file {csv_path} does not exist")
    with csv_path.open(newline="") as handle:
        lines = list(csv.reader(handle))
    if not lines or not lines[0]:
        raise _fail(path, f"{where}: csv file {csv_path} has no header")
    columns, rows = lines[0], [row for row in lines[1:] if row]
    for i, row in enumerate(rows):
        if len(row) != len(columns):
            raise _fail(path, f"{where}: row {i + 1} of {csv_path} has {len(row)} fields, header has {len(columns)}")
    return columns, rows


def _check_table(path: Path, results_dir: Path, index: int, table: Any) -> dict[str, Any]:
    where = f"tables[{index}]"
    if not isinstance(table, dict):
        raise _fail(path, f"{where} must be an object")
    unknown = set(table) - {"caption", "columns", "rows", "csv"}
    if unknown:
        raise _fail(path, f"{where}: unknown keys {sorted(unknown)}")
    caption = table.get("caption")
    if not isinstance(caption, str) or not caption.strip():
        raise _fail(path, f"{where}: 'caption' must be a non-empty string")
    if "csv" in table:
        if "columns" in table or "rows" in table:
            raise _fail(path, f"{where}: give either 'csv' or 'columns' and 'rows', not both")
        columns, rows = _read_csv(path, results_dir, table["csv"], where)
        return {"caption": caption, "columns": columns, "rows": rows}
    columns, rows = table.get("columns"), table.get("rows")
    if not isinstance(columns, list) or not columns or not all(isinstance(c, str) for c in columns):
        raise _fail(path, f"{where}: 'columns' must be a non-empty list of strings (or give 'csv')")
    if not isinstance(rows, list) or not rows:
        raise _fail(path, f"{where}: 'rows' must be a non-empty list of rows")
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != len(columns):
            raise _fail(path, f"{where}: row {i} must be a list of {len(columns)} cells, one per column")
        for j, value in enumerate(row):
            _check_cell(path, f"{where}, row {i}, column {j}", value)
    return {"caption": caption, "columns": columns, "rows": rows}


def load_result(path: Path, results_dir: Path, repo_root: Path) -> dict[str, Any] | None:
    """Read and check one result file; ``None`` when it is not a benchmark page (no ``"tables"`` key).

    Raises
    ------
    BenchmarkResultError
        When the file is not valid JSON or does not follow the schema (module docstring).
    """
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _fail(path, f"not a readable JSON file ({error})") from error
    if not isinstance(data, dict) or "tables" not in data:
        return None
    unknown = set(data) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS)
    if unknown:
        allowed = sorted({*REQUIRED_KEYS, *OPTIONAL_KEYS})
        raise _fail(path, f"unknown keys {sorted(unknown)} (allowed: {allowed})")
    for key, kind in REQUIRED_KEYS.items():
        if not isinstance(data.get(key), kind) or not data[key]:
            raise _fail(path, f"'{key}' must be a non-empty {kind.__name__}")
    if "figure" in data:
        if not isinstance(data["figure"], str) or not (repo_root / data["figure"]).is_file():
            raise _fail(path, f"'figure' must be an existing file relative to {repo_root}, got {data['figure']!r}")
    tables = [_check_table(path, results_dir, i, table) for i, table in enumerate(data["tables"])]
    return {**data, "tables": tables}


def _format_cell(value: Any) -> str:
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value)  # numbers exactly as recorded
    return text.replace("|", "\\|").replace("\n", " ")


def _markdown_table(table: dict[str, Any]) -> list[str]:
    lines = [f"**{table['caption'].strip()}**", ""]
    lines.append("| " + " | ".join(_format_cell(c) for c in table["columns"]) + " |")
    lines.append("|" + " --- |" * len(table["columns"]))
    lines += ["| " + " | ".join(_format_cell(v) for v in row) + " |" for row in table["rows"]]
    return [*lines, ""]


def render_result(result: dict[str, Any], *, figure_prefix: str = "../") -> str:
    """Markdown section of one checked result (``figure_prefix`` leads from the page to the repository root)."""
    lines = [f"## {result['title'].strip()}", "", result["summary"].strip(), ""]
    lines += ["```bash", result["command"].strip(), "```", "", f"**Machine:** {result['machine'].strip()}", ""]
    for table in result["tables"]:
        lines += _markdown_table(table)
    if "figure" in result:
        lines += [f"![{result['title'].strip()}]({figure_prefix}{result['figure']})", ""]
    return "\n".join(lines)


def render_page(results_dir: Path, repo_root: Path, *, figure_prefix: str = "../") -> str:
    """The whole benchmarks page from every result file in ``results_dir``, in name order."""
    results = [load_result(path, results_dir, repo_root) for path in sorted(Path(results_dir).glob("*.json"))]
    sections = [render_result(r, figure_prefix=figure_prefix) for r in results if r is not None]
    if not sections:
        sections = ["No benchmark result has been recorded in `benchmarks/results/*.json` yet.\n"]
    return "\n".join(["# Benchmarks", "", INTRO, "", *sections])


def write_page(app) -> None:
    """``builder-inited`` handler: write ``benchmarks.md`` into the source directory (only when it changed)."""
    confdir = Path(app.confdir)
    results_dir = (confdir / app.config.benchmark_results_dir).resolve()
    repo_root = (confdir / app.config.benchmark_repo_root).resolve()
    target = Path(app.srcdir) / PAGE_NAME
    prefix = Path(os.path.relpath(repo_root, target.parent)).as_posix() + "/"
    text = render_page(results_dir, repo_root, figure_prefix=prefix)
    if not target.exists() or target.read_text() != text:
        target.write_text(text)


def setup(app) -> dict[str, Any]:
    """Register the configuration values and the page writer."""
    app.add_config_value("benchmark_results_dir", "../benchmarks/results", "env")
    app.add_config_value("benchmark_repo_root", "..", "env")
    app.connect("builder-inited", write_page)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
