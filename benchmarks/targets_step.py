"""Time per training step as the number of targets grows, every-target step against the minibatch's-targets step.

For each target count a screen with the same cells, genes and batch size is simulated (Poisson counts around
log-normal gene means, ``--controls`` control cells, the other cells spread evenly over the targets, one target
each), a ``PerturbationModel`` is built and the training step (loss, backward, optimizer update, as
``model.train`` runs it) is timed on ``--steps`` fixed minibatches, with ``SVIModule(sparse_targets=False)`` (every
target's global sites, Adam) and ``sparse_targets=True`` (the minibatch's targets only, SparseAdam for their rows).
All settings run in one process, in ``--rounds`` rounds of alternating order; the minimum milliseconds per step of
each is reported (the least noisy comparison on a shared machine), and the ratio of each step to the sparse step
at the smallest target count.

Run: ``python benchmarks/targets_step.py [--targets 25 100 10000] [--cells 20000] [--genes 2000]``. Writes
``benchmarks/results/targets_step.json``.
"""

from __future__ import annotations

import argparse
import time

import anndata as ad
import numpy as np
import pyro
import scipy.sparse as sp
import torch
from _results import command_line, table, write_result
from throughput import add_machine_arguments, setup_machine

import pertpyro
from pertpyro.data._loader import make_loader
from pertpyro.inference._lightning import SVIModule

SUMMARY = (
    "Milliseconds per training step (loss, backward, optimizer update) on screens with the same cells, genes and "
    "batch size and a growing number of targets. 'every target': each step samples, scores and updates the global "
    "sites of all targets (targets x genes effects, Adam). 'minibatch targets' (SVIModule sparse_targets=True): only "
    "the rows of the targets the minibatch holds, weighted by their inverse inclusion probabilities, updated by "
    "SparseAdam. Minimum over alternating rounds in one process; ratio = time / time of the minibatch-targets step at "
    "the smallest target count."
)
COLUMNS = ["targets", "cells", "genes", "batch", "step", "targets in a batch", "ms per step", "ratio"]


def simulate(n_cells: int, n_genes: int, n_targets: int, n_controls: int, seed: int = 0) -> ad.AnnData:
    """A registered screen: Poisson counts around log-normal gene means, one target per perturbed cell."""
    rng = np.random.default_rng(seed)
    perturbed = n_cells - n_controls
    labels = np.concatenate([np.full(n_controls, "control"), np.arange(perturbed) % n_targets]).astype(str)
    labels[n_controls:] = np.char.add("T", labels[n_controls:])
    means = np.exp(rng.normal(-0.5, 1.0, size=n_genes)).astype(np.float32)
    counts = rng.poisson(means, size=(n_cells, n_genes)).astype(np.float32)
    counts[:, 0] += 1.0  # no empty cells
    adata = ad.AnnData(sp.csr_matrix(counts))
    adata.obs_names = [f"c{i}" for i in range(n_cells)]
    adata.var_names = [f"g{j}" for j in range(n_genes)]
    adata.obs["perturbation"] = labels
    pertpyro.setup_anndata(adata, perturbation_key="perturbation", control="control")
    return adata


def make_step(adata: ad.AnnData, sparse: bool, batch_size: int, n_steps: int):
    """A function running the training step on fixed minibatches, and the mean number of targets in a batch."""
    model = pertpyro.PerturbationModel(adata, latent_dim=10)
    n = adata.n_obs
    target_cells = torch.from_numpy(model.cell_data.target_cells()).float()
    module = SVIModule(
        model.program, model.guide, n_train=n, n_val=n, lr=1e-3, target_cells=target_cells, sparse_targets=sparse
    )
    optimizers = module.configure_optimizers()
    optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
    loader = make_loader(model.cell_data, batch_size=batch_size, shuffle=True, seed=0)
    batches = [batch for _, batch in zip(range(n_steps), loader, strict=False)]
    present = float(np.mean([int(b["perturbation"].any(0).sum()) for b in batches]))

    def run() -> float:
        start = time.perf_counter()
        for b in batches:
            loss = module._loss(b, n, sparse=sparse)
            for optimizer in optimizers:
                optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for optimizer in optimizers:
                optimizer.step()
        return (time.perf_counter() - start) / len(batches) * 1000

    return run, present


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, nargs="+", default=[25, 100, 10000])
    parser.add_argument("--cells", type=int, default=20000)
    parser.add_argument("--controls", type=int, default=2000)
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-dense-above", type=int, default=None, help="time the every-target step only below")
    add_machine_arguments(parser, threads=1)
    args = parser.parse_args()
    setup_machine(args)
    pyro.set_rng_seed(0)
    settings = {}
    for n_targets in args.targets:
        adata = simulate(args.cells, args.genes, n_targets, args.controls)
        for sparse in (False, True):
            if not sparse and args.skip_dense_above is not None and n_targets > args.skip_dense_above:
                continue
            settings[(n_targets, sparse)] = make_step(adata, sparse, args.batch_size, args.steps)
        del adata
    times: dict = {key: [] for key in settings}
    keys = list(settings)
    with pyro.validation_enabled(False):  # as in training
        for _, (run, _) in settings.items():  # warm-up
            run()
        for r in range(args.rounds):
            for key in keys[:: 1 if r % 2 == 0 else -1]:
                times[key].append(settings[key][0]())
                print(f"round {r} targets {key[0]:>6} {'sparse' if key[1] else 'dense '} {times[key][-1]:9.1f} ms")
    reference = min(times[(min(args.targets), True)])
    rows = []
    for (n_targets, sparse), values in times.items():
        ms = min(values)
        step = "minibatch targets" if sparse else "every target"
        present = settings[(n_targets, sparse)][1]
        rows.append([n_targets, args.cells, args.genes, args.batch_size, step, present, ms, ms / reference])
        print(f"{n_targets:>6} targets, {step:>17}: {ms:9.1f} ms per step, ratio {ms / reference:.2f}")
    write_result(
        "targets_step",
        title="Training step time against the number of targets",
        command=command_line(),
        summary=SUMMARY + f" Torch threads: {args.threads}.",
        tables=[table(f"Milliseconds per step, minimum over {args.rounds} rounds", COLUMNS, rows, digits=2)],
    )


if __name__ == "__main__":
    main()
