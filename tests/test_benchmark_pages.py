"""The docs extension that renders ``benchmarks/results/*.json`` into the benchmarks page."""

import importlib.util
import json
from pathlib import Path

import pytest

EXT = Path(__file__).resolve().parents[1] / "docs" / "_ext" / "benchmark_pages.py"


@pytest.fixture(scope="module")
def pages():
    spec = importlib.util.spec_from_file_location("benchmark_pages", EXT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _result(**overrides):
    result = {
        "title": "Throughput",
        "command": "python benchmarks/throughput.py --epochs 7",
        "machine": "2-core CPU, 24 GiB",
        "summary": "Cells per second of a training epoch.",
        "tables": [{"caption": "Batch sizes", "columns": ["batch", "cells/s"], "rows": [["512", 28993], [2048, 0.97]]}],
    }
    return {**result, **overrides}


def _write(directory, name, content):
    path = directory / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def test_valid_result_renders_its_numbers(tmp_path, pages):
    _write(tmp_path, "b_throughput.json", _result())
    _write(tmp_path, "scaling.csv", "cells,seconds\n50000,41.73\n200000,362.17\n")
    table = {"caption": "Scaling", "csv": "scaling.csv"}
    _write(tmp_path, "a_scaling.json", _result(title="Scaling", tables=[table]))
    _write(tmp_path, "raw_output.json", {"seed": 0, "auroc": 0.978})  # no "tables": not a page
    page = pages.render_page(tmp_path, tmp_path)
    assert page.index("## Scaling") < page.index("## Throughput")  # sorted by file name
    assert "| 512 | 28993 |" in page
    assert "| 2048 | 0.97 |" in page
    assert "| 200000 | 362.17 |" in page
    assert "python benchmarks/throughput.py --epochs 7" in page
    assert "2-core CPU, 24 GiB" in page
    assert "0.978" not in page


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        _result(summary=""),
        _result(machine=None),
        _result(tables=[]),
        _result(extra="typo'd key"),
        _result(tables=[{"caption": "t", "columns": ["a", "b"], "rows": [[1]]}]),
        _result(tables=[{"caption": "t", "columns": ["a"], "rows": [[{"nested": 1}]]}]),
        _result(tables=[{"caption": "t", "csv": "missing.csv"}]),
        _result(tables=[{"columns": ["a"], "rows": [[1]]}]),
        _result(figure="no/such/figure.png"),
    ],
    ids=["json", "summary", "machine", "no-tables", "unknown-key", "row-length", "cell-type", "csv", "caption", "fig"],
)
def test_malformed_result_raises(tmp_path, pages, content):
    _write(tmp_path, "bad.json", content)
    with pytest.raises(pages.BenchmarkResultError, match="bad.json"):
        pages.render_page(tmp_path, tmp_path)


def test_recorded_results_are_valid(pages):
    results = EXT.parents[2] / "benchmarks" / "results"
    page = pages.render_page(results, EXT.parents[2])
    assert page.startswith("# Benchmarks")
