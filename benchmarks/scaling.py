"""Peak host memory and throughput of streaming training from an on-disk (backed) h5ad, as the screen grows.

For every size a simulated screen is written to an h5ad file chunk by chunk (CSR ``X``, appended with
``anndata.io.sparse_dataset(...).append``), so the writer never holds more than one chunk of cells. Then a fresh
Python process opens it with ``anndata.read_h5ad(path, backed="r")``, registers it, builds a ``PerturbationModel``
(one chunked pass for the library sizes, one for the gene and target sums) and trains one epoch (``max_epochs=1``,
10% of the cells held out for the validation pass). The child reports its own peak RSS (``VmHWM``) after each
phase and the wall time; one CSV row per run.

Counts: per-label gene shares (a log-normal baseline, each target moving 20 genes by a log-fold change of +-1),
library sizes log-normal around ``--depth`` UMIs, Poisson counts; 20% control cells, the rest one target each.

With ``--ate-samples S``, the child then times ``model.ate`` on the trained model, in the same process: the
``"table"`` estimator over the first ``--ate-labels`` targets (0: all) and the ``"analytic"`` and ``"simulate"`` ones
over a few, each with ``S`` posterior draws over ``--ate-cells`` population cells; the row gets the seconds and
milliseconds per label of each, beside the epoch's ``train_s``.

Writes ``benchmarks/results/scaling.csv`` (one row per run; ``--append`` keeps earlier rows), the figure
``docs/figures/scaling.png`` and ``benchmarks/results/scaling.json``. Run::

    python benchmarks/scaling.py --cells 50000 200000 1000000 --genes 2000 --targets 100
    python benchmarks/scaling.py --cells 50000 --genes 1000 2000 5000 --targets 100 --append
    python benchmarks/scaling.py --cells 50000 --genes 2000 --targets 20 500 2000 --append
    python benchmarks/scaling.py --cells 40000 --genes 2000 --targets 2000 --batch-size 512 --ate-samples 100 \
        --ate-cells 500 --ate-labels 0 4 --append
    python benchmarks/scaling.py --plot-only
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _results import RESULTS_DIR, command_line, write_result

ROOT = Path(__file__).resolve().parents[1]
CSV = ROOT / "benchmarks" / "results" / "scaling.csv"
FIGURE = ROOT / "docs" / "figures" / "scaling.png"


def _label_shares(n_genes: int, n_targets: int, rng: np.random.Generator) -> np.ndarray:
    """Expression share of every gene for each label (row 0: control, row t + 1: target t)."""
    log_base = rng.normal(0.0, 2.0, size=n_genes)
    log_shares = np.tile(log_base, (n_targets + 1, 1))
    for t in range(n_targets):
        genes = rng.choice(n_genes, size=min(20, n_genes), replace=False)
        log_shares[t + 1, genes] += rng.choice([-1.0, 1.0], size=genes.size)
    shares = np.exp(log_shares - log_shares.max(1, keepdims=True))
    return shares / shares.sum(1, keepdims=True)


def write_screen(
    path: Path, n_cells: int, n_genes: int, n_targets: int, *, depth: float = 500.0, chunk: int = 10_000, seed: int = 0
) -> int:
    """Write a simulated screen to ``path`` (h5ad, CSR ``X``) one chunk of cells at a time; return the non-zeros."""
    import anndata as ad
    import h5py
    import scipy.sparse as sp
    from anndata.io import sparse_dataset, write_elem

    rng = np.random.default_rng(seed)
    shares = _label_shares(n_genes, n_targets, rng)
    names = np.array(["control"] + [f"T{t}" for t in range(n_targets)])
    codes = np.where(rng.random(n_cells) < 0.2, 0, rng.integers(1, n_targets + 1, size=n_cells))
    var = pd.DataFrame(index=[f"G{g}" for g in range(n_genes)])
    obs = pd.DataFrame(
        {"perturbation": pd.Categorical.from_codes(codes, categories=names)},
        index=pd.Index([f"c{i}" for i in range(n_cells)]),
    )

    def chunk_counts(start: int, stop: int) -> sp.csr_matrix:
        library = rng.lognormal(np.log(depth), 0.3, size=stop - start)
        counts = rng.poisson(library[:, None] * shares[codes[start:stop]]).astype(np.float32)
        counts[:, 0] += counts.sum(1) == 0  # no empty cell
        return sp.csr_matrix(counts)

    first = min(chunk, n_cells)
    ad.AnnData(chunk_counts(0, first), obs=obs.iloc[:first], var=var).write_h5ad(path)
    with h5py.File(path, "a") as f:
        matrix = sparse_dataset(f["X"])
        for start in range(first, n_cells, chunk):
            matrix.append(chunk_counts(start, min(start + chunk, n_cells)))
        del f["obs"]
        write_elem(f, "obs", obs)
        nnz = int(f["X"]["data"].shape[0])
    return nnz


def _rss_mib() -> float:
    """Peak RSS of this process so far, in MiB.

    Linux's ``VmHWM`` (the high-water mark of this program's memory, reset by ``exec``); ``ru_maxrss`` elsewhere,
    which on Linux also carries the parent's RSS at the time of the fork into the child.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024**2 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB elsewhere


def ate_timing(model, n_samples: int, max_cells: int, n_labels: int, estimators: list[str]) -> dict:
    """Seconds per label of ``model.ate`` for each estimator (on the first ``n_labels`` targets; 0: all targets).

    The estimators run one after the other on the same trained model, in this process.
    """
    labels = list(model.registry.targets)
    if n_labels:
        labels = labels[:n_labels]
    out = {"ate_samples": n_samples, "ate_cells": max_cells}
    for estimator in estimators:
        t0 = time.perf_counter()
        model.ate(labels, n_samples=n_samples, max_cells=max_cells, estimator=estimator, calibrated=False)
        seconds = time.perf_counter() - t0
        out[f"ate_{estimator}_labels"] = len(labels)
        out[f"ate_{estimator}_s"] = seconds
        out[f"ate_{estimator}_ms_per_label"] = 1000 * seconds / len(labels)
    return out


def train_child(path: str, batch_size: int, backed: bool, block_size: int = 1, ate: dict | None = None) -> dict:
    """One epoch of training from ``path`` in this process; peak RSS after each phase (run in a fresh process).

    ``ate``: then time ``model.ate`` per label (keyword arguments of :func:`ate_timing` per estimator run).
    """
    import anndata as ad

    import pertpyro

    out = {"rss_imports_mib": _rss_mib()}
    t0 = time.perf_counter()
    adata = ad.read_h5ad(path, backed="r" if backed else None)
    pertpyro.setup_anndata(adata)
    out |= {"setup_s": time.perf_counter() - t0, "rss_setup_mib": _rss_mib()}
    t0 = time.perf_counter()
    model = pertpyro.PerturbationModel(adata)
    out |= {"init_s": time.perf_counter() - t0, "rss_init_mib": _rss_mib()}
    t0 = time.perf_counter()
    history = model.train(
        max_epochs=1, batch_size=batch_size, block_size=block_size, early_stopping=False, progress_bar=False, seed=0
    )
    out |= {
        "train_s": time.perf_counter() - t0,
        "rss_peak_mib": _rss_mib(),
        "train_loss": float(history["train_loss"].iloc[-1]),
        "n_cells": adata.n_obs,
    }
    for run in (ate or {}).get("runs", []):
        out |= ate_timing(model, **run)
    return out


def run_one(
    n_cells: int,
    n_genes: int,
    n_targets: int,
    batch_size: int,
    folder: Path,
    *,
    backed: bool = True,
    block_size: int = 1,
    ate: dict | None = None,
) -> dict:
    """Write one screen, train on it in a fresh process (then time the ATE, with ``ate``), delete it; one row."""
    path = folder / f"screen_{n_cells}_{n_genes}_{n_targets}.h5ad"
    t0 = time.perf_counter()
    nnz = write_screen(path, n_cells, n_genes, n_targets)
    write_s = time.perf_counter() - t0
    size_mb = path.stat().st_size / 1e6
    env = os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    command = [sys.executable, __file__, "--child", str(path), "--batch-size", str(batch_size)]
    command += ["--block-size", str(block_size)]
    if ate:
        command += ["--ate-json", json.dumps(ate)]
    if not backed:
        command.append("--in-memory")
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    except subprocess.CalledProcessError as err:
        raise RuntimeError(err.stderr[-3000:]) from err
    finally:
        path.unlink(missing_ok=True)
    child = json.loads(done.stdout.strip().splitlines()[-1])
    row = {
        "mode": "backed" if backed else "in_memory",
        "n_cells": n_cells,
        "n_genes": n_genes,
        "n_targets": n_targets,
        "batch_size": batch_size,
        "block_size": block_size,
        "nnz": nnz,
        "file_mb": round(size_mb, 1),
        "write_s": round(write_s, 1),
        **{k: round(v, 2) if isinstance(v, float) else v for k, v in child.items()},
    }
    row["cells_per_s"] = round(n_cells / child["train_s"], 1)  # one epoch: training cells + validation pass
    return row


def plot(frame: pd.DataFrame, path: Path) -> None:
    """Peak RSS and cells/s against cells (backed, the largest gene count), genes and targets."""
    import matplotlib.pyplot as plt

    frame = frame.assign(block_size=frame.get("block_size", pd.Series(1, index=frame.index)).fillna(1))
    if "run" in frame:  # rows of side experiments (e.g. block reads against random reads) stay out of the sweeps
        frame = frame[frame["run"].fillna("sweep") == "sweep"]
    backed = frame[(frame["mode"] == "backed") & (frame["block_size"] == 1)]
    if backed.empty:
        return
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, (key, fixed) in zip(
        axes,
        [
            ("n_cells", ("n_genes", "n_targets")),
            ("n_genes", ("n_cells", "n_targets")),
            ("n_targets", ("n_cells", "n_genes")),
        ],
        strict=True,
    ):
        groups = backed.groupby(list(fixed))
        best = max(groups, key=lambda g: g[1][key].nunique())  # the sweep over `key`
        sub = best[1].sort_values(key)
        ax.plot(sub[key], sub["rss_peak_mib"] / 1024, "o-", color="C0", label="peak RSS (GiB)")
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(sub[key], [f"{int(v):,}" for v in sub[key]])
        ax.set_xlabel(key.replace("n_", "") + f"  ({fixed[0][2:]}={best[0][0]}, {fixed[1][2:]}={best[0][1]})")
        ax.set_ylabel("peak RSS (GiB)", color="C0")
        ax.set_ylim(0, max(1.0, 1.2 * sub["rss_peak_mib"].max() / 1024))
        twin = ax.twinx()
        twin.plot(sub[key], sub["cells_per_s"], "s--", color="C1")
        twin.set_ylabel("cells/s (shared CPU: noisy)", color="C1")
        twin.set_ylim(0, 1.2 * sub["cells_per_s"].max())
    blocks = frame[(frame["mode"] == "backed") & (frame["block_size"] > 1)]
    if len(blocks):
        axes[0].plot(blocks["n_cells"], blocks["rss_peak_mib"] / 1024, "^", color="C2", label="backed, block reads")
    memory = frame[frame["mode"] == "in_memory"]
    if len(memory):
        axes[0].plot(memory["n_cells"], memory["rss_peak_mib"] / 1024, "x:", color="C3", label="in memory")
    if len(memory) or len(blocks):
        axes[0].legend(loc="upper left", fontsize=8)
        axes[0].set_ylim(0, 1.2 * frame["rss_peak_mib"].max() / 1024)
    fig.suptitle("One epoch from a backed h5ad (batch 4096): peak RSS (blue) and cells/s (orange), 2-core shared CPU")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


SUMMARY = (
    "Simulated screens of growing size are written to h5ad files chunk by chunk; a fresh process opens each with "
    "anndata.read_h5ad(path, backed='r'), builds a PerturbationModel and trains one full epoch (90% of the cells "
    "trained, 10% validated, batch 4096). The table shows, per run, the file size, the time of each phase, the peak "
    "resident memory of the training process (rss_peak_mib) and the throughput (cells_per_s). Peak memory is set by "
    "the training step (batch x genes) and grows little with the number of cells, because the counts stay on disk; "
    "throughput on a shared CPU varies with the machine's load. Rows with run 'ate' then time model.ate on the "
    "trained model in the same process (ate_samples posterior draws over ate_cells population cells): the table "
    "estimator over ate_table_labels targets, the analytic one over ate_analytic_labels and the simulation over "
    "ate_simulate_labels, in milliseconds per label, beside the epoch's train_s."
)
CAPTION = (
    "One epoch per run from a backed (or, mode in_memory, loaded) h5ad; times in seconds, memory in MiB; machine and "
    "load in the machine column"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, nargs="+", default=[50_000, 200_000])
    parser.add_argument("--genes", type=int, nargs="+", default=[2000])
    parser.add_argument("--targets", type=int, nargs="+", default=[100])
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--block-size", type=int, default=1, help="consecutive cells per block (train(block_size))")
    parser.add_argument("--in-memory", action="store_true", help="(also) train from the file loaded into memory")
    parser.add_argument("--append", action="store_true", help="add rows to the existing CSV")
    parser.add_argument("--plot-only", action="store_true")
    parser.add_argument("--csv", default=str(CSV), help="the results table (rows are added with --append)")
    parser.add_argument("--tmp", default=tempfile.gettempdir(), help="folder for the temporary h5ad files")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--ate-json", help=argparse.SUPPRESS)
    parser.add_argument(
        "--ate-samples", type=int, default=0, help="after the epoch, time model.ate with this many posterior draws"
    )
    parser.add_argument("--ate-cells", type=int, default=200, help="population cells of the timed ATE (max_cells)")
    parser.add_argument(
        "--ate-labels",
        type=int,
        nargs=2,
        default=[0, 20],
        metavar=("ANALYTIC", "SIMULATE"),
        help="targets whose ATE is timed, per estimator (0: all targets)",
    )
    args = parser.parse_args()
    if args.child:
        print(
            json.dumps(
                train_child(
                    args.child,
                    args.batch_size,
                    backed=not args.in_memory,
                    block_size=args.block_size,
                    ate=json.loads(args.ate_json) if args.ate_json else None,
                )
            )
        )
        return
    ate = None
    if args.ate_samples:
        common = {"n_samples": args.ate_samples, "max_cells": args.ate_cells}
        ate = {
            "runs": [
                {**common, "n_labels": args.ate_labels[0], "estimators": ["table"]},
                {**common, "n_labels": args.ate_labels[1], "estimators": ["analytic", "simulate"]},
            ]
        }
    if not args.plot_only:
        rows = []
        for n_cells in args.cells:
            for n_genes in args.genes:
                for n_targets in args.targets:
                    row = run_one(
                        n_cells,
                        n_genes,
                        n_targets,
                        args.batch_size,
                        Path(args.tmp),
                        backed=not args.in_memory,
                        block_size=args.block_size,
                        ate=ate,
                    )
                    if ate:
                        row |= {"run": "ate", "machine": f"shared {os.cpu_count()}-core CPU (no GPU)"}
                    print(json.dumps(row), flush=True)
                    rows.append(row)
        frame = pd.DataFrame(rows)
        csv = Path(args.csv)
        if args.append and csv.exists():
            frame = pd.concat([pd.read_csv(csv), frame], ignore_index=True)
        csv.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(csv, index=False)
    plot(pd.read_csv(args.csv), FIGURE)
    csv = Path(args.csv).resolve()
    if csv.parent == RESULTS_DIR.resolve():
        write_result(
            "scaling",
            title="Training from an on-disk AnnData: memory and throughput",
            command=command_line() + (" (rows added to the earlier rows of the CSV)" if args.append else ""),
            summary=SUMMARY,
            tables=[{"caption": CAPTION, "csv": csv.name}],
            figure=FIGURE.relative_to(ROOT).as_posix(),
        )


if __name__ == "__main__":
    main()
