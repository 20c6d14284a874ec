"""The documentation builds with warnings as errors, executing the notebooks, and the rendered notebooks show plots.

This is the test command's docs build (the notebooks run here, at the settings in ``docs/conf.py``); the
notebooks themselves are committed without outputs.
"""

import html
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("html")
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}  # the kernels draw inline
    command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", "docs", str(out)]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600, check=False)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    return out


def test_docs_build_without_warnings(site):
    for page in ("index", "getting_started", "concepts", "api", "benchmarks", "tutorials"):
        assert (site / f"{page}.html").exists(), page
    api = (site / "api.html").read_text()
    for name in ("PerturbationModel", "pertpyro.module.sites", "ate_metrics", "to_inference_data"):
        assert name in api, name


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_rendered_notebooks_show_their_figures(site, notebook):
    html = (site / "notebooks" / f"{notebook}.html").read_text()
    assert "<img" in html, f"{notebook}: no figure rendered"
    assert "Traceback" not in html


def test_benchmark_page_is_generated_from_the_result_files(site):
    page = (site / "benchmarks.html").read_text()
    titles = [json.loads(path.read_text()).get("title") for path in (ROOT / "benchmarks" / "results").glob("*.json")]
    titles = [title for title in titles if title]
    assert titles
    for title in titles:
        assert html.escape(title, quote=False) in page, title
