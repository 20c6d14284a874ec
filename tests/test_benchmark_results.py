"""Benchmark result files follow the schema the docs render (benchmarks/_results.py)."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("_results", ROOT / "benchmarks" / "_results.py")
results = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(results)


def test_every_result_file_follows_the_schema():
    checked = results.check_all()
    assert {p.name for p in checked} >= {"papalexi.json", "throughput.json", "scaling.json"}


def test_write_result_round_trip(tmp_path):
    (tmp_path / "rows.csv").write_text("a,b\n1,2\n")
    table = results.table("caption", ["method", "score"], [["x", 0.12345], ["y", float("nan")]], digits=2)
    path = results.write_result(
        "demo",
        title="Demo",
        command="python benchmarks/demo.py",
        machine="test machine",
        summary="What is measured.",
        tables=[table, {"caption": "from a CSV", "csv": "rows.csv"}],
        results_dir=tmp_path,
    )
    data = json.loads(path.read_text())
    assert data["tables"][0]["rows"] == [["x", 0.12], ["y", None]]
    assert list(data) == sorted(data)
    merged = results.merged_rows("demo", ["method", "score"], [["x", 1.0]], key=["method"], results_dir=tmp_path)
    assert merged == [["y", None], ["x", 1.0]]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"title": ""}, "title"),
        ({"tables": []}, "tables"),
        ({"tables": [{"caption": "c", "columns": ["a"], "rows": [[1, 2]]}]}, "cells"),
        ({"tables": [{"caption": "c", "csv": "missing.csv"}]}, "csv"),
        ({"extra": 1}, "unknown"),
    ],
)
def test_invalid_results_are_rejected(tmp_path, change, message):
    result = {
        "title": "t",
        "command": "c",
        "machine": "m",
        "summary": "s",
        "tables": [{"caption": "c", "columns": ["a"], "rows": [[1]]}],
    }
    with pytest.raises(ValueError, match=message):
        results.validate(result | change, tmp_path)
