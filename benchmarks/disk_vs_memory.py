"""Training throughput from disk against in memory, side by side in one run, with the peak memory of each.

A simulated screen (``scaling.write_screen``: CSR counts written chunk by chunk) is converted once with
``pertpyro.data.shuffle_h5ad`` (timed, in its own process, with its peak RSS). Then, for each mode, a fresh process
opens the shuffled file, builds a ``PerturbationModel`` with its defaults and calls ``model.train`` with the defaults
of that mode; the modes alternate, ``--repeats`` times:

- ``memory``: the file loaded into memory (``anndata.read_h5ad(path)``), cells drawn at random;
- ``spans``: the file opened backed (``backed="r"``), trained with ``train``'s defaults for a shuffled file: spans of
  ``SPAN_SIZE`` consecutive cells read by one DataLoader worker process ahead of the step;
- ``random``: the same backed file, cells drawn one by one at random (``span_size=1``) but read by a worker
  (``num_workers=1``), each minibatch's rows read directly with h5py;
- ``backed``: the same backed file, cells drawn one by one at random and read in the training process by anndata
  (``span_size=1``, ``num_workers=0``: the loader a backed AnnData gets when its file is not shuffled).

Each process trains with one torch thread; the ``spans`` worker is a second process (on a 2-core machine it can use
the other core). An epoch of a large screen takes longer than a benchmark should, so each run trains ``--steps``
minibatches of ``--batch-size`` cells through ``model.train`` (Lightning's ``limit_train_batches``, set by wrapping
``lightning.pytorch.Trainer``; validation off) and the throughput is taken from the end of step ``--warmup`` to the
end of the last step, the time between steps included (where the training step waits for its data).
``loader_wait_s`` is the mean time per step from the end of one step to the start of the next. Peak RSS is the
training process's ``VmHWM``, and the largest ``VmHWM`` among its worker processes (which share the parent's pages
copy-on-write, so the sum of the two overstates the memory in use). Run::

    python benchmarks/disk_vs_memory.py --cells 200000 --genes 2000 --targets 100 --tmp /path/with/space
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _results import table, write_result
from scaling import _rss_mib, write_screen

ROOT = Path(__file__).resolve().parents[1]
MODES = ("memory", "spans", "random", "backed")
OPTIONS = {"memory": {}, "spans": {}, "random": {"span_size": 1, "num_workers": 1}, "backed": {"span_size": 1}}


def _worker_peaks_mib() -> list[float]:
    """``VmHWM`` of each child process of this one (the DataLoader workers), in MiB."""
    peaks = []
    for task in Path("/proc").glob("[0-9]*"):
        try:
            status = (task / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if int(fields.get("PPid", "0").strip()) == os.getpid() and "VmHWM" in fields:
            peaks.append(int(fields["VmHWM"].split()[0]) / 1024)
    return peaks


def shuffle_child(src: str, dst: str) -> dict:
    """Convert ``src`` to the shuffled ``dst`` in this process; seconds and peak RSS."""
    from pertpyro.data import shuffle_h5ad

    t0 = time.perf_counter()
    shuffle_h5ad(src, dst, seed=0, overwrite=True)
    return {"shuffle_s": time.perf_counter() - t0, "shuffle_rss_mib": _rss_mib()}


def train_child(path: str, mode: str, batch_size: int, steps: int, warmup: int) -> dict:
    """Train ``steps`` minibatches from ``path`` in ``mode`` in this process; throughput and peak RSS."""
    import anndata as ad
    import lightning.pytorch as pl
    import torch

    import pertpyro

    torch.set_num_threads(1)
    marks: dict[str, list[float]] = {"start": [], "end": []}
    workers: list[float] = []

    class Clock(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
            marks["start"].append(time.perf_counter())

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            marks["end"].append(time.perf_counter())

        def on_train_epoch_end(self, trainer, module) -> None:
            workers.extend(_worker_peaks_mib())

    class LimitedTrainer(pl.Trainer):
        def __init__(self, *args, **kwargs) -> None:
            kwargs |= {"limit_train_batches": steps, "limit_val_batches": 0}
            kwargs["callbacks"] = [*kwargs.get("callbacks", []), Clock()]
            super().__init__(*args, **kwargs)

    pl.Trainer = LimitedTrainer  # pertpyro.inference builds its Trainer as lightning.pytorch.Trainer(...)
    t0 = time.perf_counter()
    adata = ad.read_h5ad(path, backed=None if mode == "memory" else "r")
    pertpyro.setup_anndata(adata)
    model = pertpyro.PerturbationModel(adata)
    setup_s = time.perf_counter() - t0
    options = OPTIONS[mode]
    t0 = time.perf_counter()
    model.train(max_epochs=1, batch_size=batch_size, early_stopping=False, progress_bar=False, seed=0, **options)
    train_s = time.perf_counter() - t0
    span_size, num_workers = model._span_settings(options.get("span_size"), options.get("num_workers"), 1)
    start, end = marks["start"], marks["end"]
    timed = len(end) - warmup
    waits = [start[k] - end[k - 1] for k in range(warmup, len(end))]
    return {
        "mode": mode,
        "span_size": span_size,
        "num_workers": num_workers,
        "steps": timed,
        "cells_per_s": timed * batch_size / (end[-1] - end[warmup - 1]),
        "step_s": sum(e - s for s, e in zip(start[warmup:], end[warmup:], strict=True)) / timed,
        "loader_wait_s": sum(waits) / timed,
        "setup_s": setup_s,
        "train_s": train_s,
        "rss_peak_mib": _rss_mib(),
        "worker_rss_peak_mib": max(workers, default=0.0),
    }


def _child(args: list[str]) -> dict:
    env = os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    try:
        done = subprocess.run([sys.executable, __file__, *args], env=env, capture_output=True, text=True, check=True)
    except subprocess.CalledProcessError as err:
        raise RuntimeError(err.stderr[-3000:]) from err
    return json.loads(done.stdout.strip().splitlines()[-1])


def plot(rows: list[dict], path: Path, size: str) -> None:
    """Throughput (each repeat a dot, bars at the mean) and peak RSS per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = list(dict.fromkeys(r["mode"] for r in rows))
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    for i, mode in enumerate(modes):
        mine = [r for r in rows if r["mode"] == mode]
        speeds = [r["cells_per_s"] for r in mine]
        left.bar(i, sum(speeds) / len(speeds), color=f"C{i}", alpha=0.6)
        left.plot([i] * len(speeds), speeds, "ko", ms=4)
        right.bar(i - 0.2, max(r["rss_peak_mib"] for r in mine) / 1024, 0.4, color=f"C{i}", alpha=0.6)
        right.bar(
            i + 0.2, max(r["worker_rss_peak_mib"] for r in mine) / 1024, 0.4, color=f"C{i}", alpha=0.3, hatch="//"
        )
    for ax in (left, right):
        ax.set_xticks(range(len(modes)), modes)
    left.set_ylabel("cells/s (dots: repeats)")
    right.set_ylabel("peak RSS, GiB (hatched: worker)")
    right.axhline(4, color="grey", lw=0.8, ls="--")
    fig.suptitle(f"Training from memory and from disk, {size}; shared 2-core CPU, one torch thread", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, default=200_000)
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--targets", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=30, help="minibatches trained per run")
    parser.add_argument("--warmup", type=int, default=3, help="first steps left out of the throughput")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each mode, alternating")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--tmp", default="/tmp", help="folder for the h5ad files (kept for later runs)")
    parser.add_argument("--name", default="disk_vs_memory", help="result file name")
    parser.add_argument("--figure", help="also draw the throughputs and peak memory to this image (under docs/figures)")
    parser.add_argument("--convert-only", action="store_true", help="write and shuffle the screen, train nothing")
    parser.add_argument("--child", nargs=2, metavar=("PATH", "MODE"), help=argparse.SUPPRESS)
    parser.add_argument("--shuffle-child", nargs=2, metavar=("SRC", "DST"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(train_child(args.child[0], args.child[1], args.batch_size, args.steps, args.warmup)))
        return
    if args.shuffle_child:
        print(json.dumps(shuffle_child(*args.shuffle_child)))
        return
    if args.warmup < 1 or args.steps <= args.warmup:
        parser.error("need 1 <= --warmup < --steps")
    folder = Path(args.tmp)
    src = folder / f"screen_{args.cells}_{args.genes}_{args.targets}.h5ad"
    dst = src.with_name(src.stem + "_shuffled.h5ad")
    shape = {"n_cells": args.cells, "n_genes": args.genes, "n_targets": args.targets}
    if not src.exists():
        write_screen(src, args.cells, args.genes, args.targets)
    record = dst.with_suffix(".json")  # the conversion of an earlier run, kept with its file
    if dst.exists() and record.exists():
        conversion = json.loads(record.read_text())
    else:
        conversion = _child(["--shuffle-child", str(src), str(dst)])
        record.write_text(json.dumps(conversion))
    print(json.dumps(conversion), flush=True)
    if args.convert_only:
        return
    rows = []
    for repeat in range(args.repeats):
        for mode in args.modes if repeat % 2 == 0 else args.modes[::-1]:  # each mode first in turn
            common = ["--batch-size", str(args.batch_size), "--steps", str(args.steps), "--warmup", str(args.warmup)]
            row = {"repeat": repeat} | _child(["--child", str(dst), mode, *common])
            print(json.dumps(row), flush=True)
            rows.append(row)
    memory = {r["repeat"]: r["cells_per_s"] for r in rows if r["mode"] == "memory"}
    columns = [
        "repeat",
        "mode",
        "span_size",
        "num_workers",
        "steps",
        "cells_per_s",
        "vs_memory",
        "step_s",
        "loader_wait_s",
        "rss_peak_mib",
        "worker_rss_peak_mib",
        "setup_s",
    ]
    for row in rows:
        row["vs_memory"] = row["cells_per_s"] / memory[row["repeat"]] if row["repeat"] in memory else None
    size = f"{args.cells:,} cells x {args.genes:,} genes, {args.targets} targets, batch {args.batch_size}"
    if args.figure:
        plot(rows, ROOT / args.figure, size)
    write_result(
        args.name,
        figure=args.figure,
        title=f"Training from disk against in memory ({size})",
        summary=(
            f"A simulated screen of {size} is converted once with pertpyro.data.shuffle_h5ad "
            f"({conversion['shuffle_s']:.0f} s, peak RSS {conversion['shuffle_rss_mib']:.0f} MiB). Fresh processes "
            "then train from it, the modes alternating: in memory (memory), backed with the default loader of a "
            "shuffled file (spans: spans of consecutive cells read by a DataLoader worker ahead of the step), backed "
            "with cells drawn one by one at random and read by a worker (random), and backed with cells drawn one by "
            "one and read by anndata in the training process (backed, the loader of a file that is not shuffled). Each trains a fixed number of minibatches through "
            "model.train with one torch thread; cells_per_s runs from the end of the warm-up steps to the end of the "
            "last step, waits for data included, vs_memory is its ratio to the memory run of the same repeat, "
            "loader_wait_s the mean time per step spent between steps. Peak RSS of the training process and of its "
            "largest worker (which shares the parent's pages copy-on-write). The machine is shared with other work, "
            "so the throughputs move between repeats; the ratios are measured side by side."
        ),
        tables=[
            table(
                f"Throughput and peak memory per mode ({size}); times in seconds, memory in MiB",
                columns,
                [[row.get(c) for c in columns] for row in rows],
                digits=3,
            ),
            table(
                "Conversion to the shuffled store",
                ["n_cells", "n_genes", "n_targets", "shuffle_s", "shuffle_rss_mib"],
                [[*shape.values(), conversion["shuffle_s"], conversion["shuffle_rss_mib"]]],
                digits=1,
            ),
        ],
    )


if __name__ == "__main__":
    main()
