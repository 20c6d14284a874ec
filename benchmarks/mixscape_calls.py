"""Mixscape's per-cell calls (pertpy) on the shipped Papalexi screen, for ``benchmarks/mixscape_papalexi.py``.

Runs in its own virtual environment with pertpy, never in pertpyro's (it imports only pertpy, scanpy and anndata)::

    python3.11 -m venv /work/venvs/mixscape && /work/venvs/mixscape/bin/pip install pertpy "statsmodels<0.15" "scikit-learn<1.8"
    OMP_NUM_THREADS=1 /work/venvs/mixscape/bin/python benchmarks/mixscape_calls.py

(pertpy 1.0.3 imports ``multipletests`` from a statsmodels module that 0.15 removed, and its Gaussian mixture
overrides a scikit-learn method whose signature 1.8 changed, hence the pins.)

pertpy's documented Mixscape workflow on the RNA counts: normalise each cell to the median library size, ``log1p``,
PCA; the perturbation signature of each cell is its expression minus the mean of its 20 nearest control neighbours
(in the first 15 principal components), found within its replicate (``split_by="bio_rep"``); ``Mixscape.mixscape``
then classifies the cells of each target as knocked out (``KO``) or not perturbed (``NP``) by a two-component
Gaussian mixture along the target's differential-expression direction (controls are ``NT``), with the posterior
probability of ``KO``. Targets with fewer than 5 differentially expressed genes get ``NP`` for every cell.

Writes ``benchmarks/cache/mixscape_papalexi.csv`` (one row per cell: ``cell``, ``perturbation``, ``mixscape_class``,
``mixscape_class_global``, ``p_ko``) and ``benchmarks/cache/mixscape_papalexi.json`` (versions, command, seconds).
``benchmarks/cache/`` is git-ignored.
"""

import argparse
import json
import shlex
import sys
import time
from importlib.metadata import version
from pathlib import Path

import anndata as ad
import pertpy as pt
import scanpy as sc

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "pertpyro" / "data" / "files" / "papalexi2021_thp1_lowmoi.h5ad"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--perturbation-key", default="perturbation")
    parser.add_argument("--control", default="control")
    parser.add_argument("--replicate-key", default="bio_rep")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "cache" / "mixscape_papalexi.csv"))
    parser.add_argument(
        "--seed", type=int, default=0, help="random_state of PCA, the neighbour search and Mixscape's mixture"
    )
    args = parser.parse_args()
    start = time.perf_counter()
    adata = ad.read_h5ad(args.data)
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    sc.pp.pca(adata, random_state=args.seed)
    ms = pt.tl.Mixscape()
    ms.perturbation_signature(
        adata, args.perturbation_key, args.control, split_by=args.replicate_key, random_state=args.seed
    )
    ms.mixscape(adata, args.perturbation_key, args.control, layer="X_pert", random_state=args.seed)
    seconds = time.perf_counter() - start
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    calls = adata.obs[[args.perturbation_key, "mixscape_class", "mixscape_class_global", "mixscape_class_p_ko"]]
    calls = calls.rename(columns={args.perturbation_key: "perturbation", "mixscape_class_p_ko": "p_ko"})
    calls.index.name = "cell"
    calls.to_csv(out)
    meta = {
        "command": "python " + shlex.join([Path(sys.argv[0]).resolve().relative_to(ROOT).as_posix(), *sys.argv[1:]]),
        "versions": {name: version(name) for name in ("pertpy", "scanpy", "anndata", "scikit-learn", "numpy")},
        "seconds": round(seconds, 1),
        "replicate_key": args.replicate_key,
        "seed": args.seed,
    }
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    counts = calls.groupby("perturbation", observed=True)["mixscape_class_global"].value_counts().unstack(fill_value=0)
    print(counts.to_string())
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
