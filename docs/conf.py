"""Sphinx configuration of the pertpyro documentation.

Sphinx with myst-nb: the pages are Markdown, the tutorials are the notebooks of ``notebooks/`` executed at build
time (so the rendered outputs always come from the current code), and autodoc reads the numpy docstrings of the
package. Build with ``python -m sphinx -W --keep-going -b html docs docs/_build/html``.
"""

import os
import shutil
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
# The package of this checkout, for autodoc here and for the notebook kernels (which inherit the environment).
sys.path.insert(0, str(ROOT))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
sys.path.insert(0, str(DOCS / "_ext"))

project = "pertpyro"
author = "pertpyro developers"
copyright = "pertpyro developers"

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "benchmark_pages",
]

exclude_patterns = ["_build", "_ext", "figures", "**.ipynb_checkpoints"]
suppress_warnings = ["myst.header"]  # notebooks start their numbered sections at level 2 under a level-1 title

html_theme = "furo"
html_title = "pertpyro"

# ---- autodoc: numpy docstrings, types in the signature ----
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
# The package writes types in signatures only, and "Returns" sections as prose: render them as written.
napoleon_custom_sections = ["Returns", "Yields"]
autodoc_typehints = "signature"
autodoc_member_order = "bysource"
autodoc_inherit_docstrings = False  # not Lightning's or torch's docstrings for the methods a class overrides
autodoc_default_options = {"members": True, "show-inheritance": False}
autosummary_generate = False

myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

# ---- notebooks: copied from ../notebooks (committed without outputs) and executed at build time ----
NOTEBOOKS_SOURCE = ROOT / "notebooks"
NOTEBOOKS_TARGET = DOCS / "notebooks"  # generated, git-ignored
# Fewer epochs and draws than the notebooks' own defaults (60-100 epochs, 100 draws), which take over 12 minutes
# on a 2-core machine; tutorials.md states these numbers. Exported values win (a cached notebook is re-executed
# only when its code changes: clear docs/_build/.jupyter_cache after changing them).
NB_EPOCHS = "20"
NB_SAMPLES = "50"

os.environ.setdefault("PERTPYRO_NB_EPOCHS", NB_EPOCHS)
os.environ.setdefault("PERTPYRO_NB_SAMPLES", NB_SAMPLES)
# One BLAS/OpenMP thread per kernel: on a small shared machine, oversubscribed threads slow the run down.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
# tqdm's notice that ipywidgets is missing (the notebooks draw no progress bars) would open every rendered notebook.
os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), "ignore:IProgress not found"]))
# The kernel must draw with matplotlib's inline backend (ipykernel's default) for the figures to be rendered;
# a headless ``MPLBACKEND=Agg`` inherited from the shell would drop them.
if os.environ.get("MPLBACKEND", "").lower() == "agg":
    del os.environ["MPLBACKEND"]

nb_execution_mode = "cache"  # re-executed when a notebook's code changes; CI builds from scratch
nb_execution_timeout = 1800  # seconds per cell
nb_execution_raise_on_error = True  # a failing cell fails the build
nb_execution_show_tb = True
nb_merge_streams = True


def copy_notebooks(app, config) -> None:
    """Copy ``notebooks/*.ipynb`` into ``docs/notebooks/`` (Sphinx reads sources only below its source dir)."""
    NOTEBOOKS_TARGET.mkdir(exist_ok=True)
    wanted = {path.name: path for path in sorted(NOTEBOOKS_SOURCE.glob("*.ipynb"))}
    for stale in NOTEBOOKS_TARGET.glob("*.ipynb"):
        if stale.name not in wanted:
            stale.unlink()
    for name, source in wanted.items():
        target = NOTEBOOKS_TARGET / name
        if not target.exists() or target.read_bytes() != source.read_bytes():
            shutil.copy2(source, target)


def setup(app):
    """Copy the notebooks before Sphinx looks for source files."""
    app.connect("config-inited", copy_notebooks)
