"""CPU time of the all-target ATE table (table estimator) against one training epoch of the same screen.

A simulated screen (``targets_step.simulate``: Poisson counts, one target per perturbed cell) is built once; in one
process the training step as ``model.train`` runs it (loss, backward, optimizer update; the minibatch-targets step
that ``train`` uses from 500 targets) is timed on ``--steps`` minibatches of ``--batch-size`` cells, and the ATE of
every target as ``model.ate`` computes it (``estimator="table"``, ``--samples`` posterior draws over
``--max-cells`` population cells, then the means and intervals of the tidy table). Times are CPU seconds of this
process (``time.process_time``, one thread), which a shared machine's load changes little; the epoch is the step time
times the steps of one pass over 90% of the cells. The model is untrained, with sparse effects planted in its guide
(the table's grids follow the range of the drawn effects, so zero effects would flatter it). Run::

    python benchmarks/ate_vs_epoch.py --cells 40000 --genes 2000 --targets 2000
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from _results import table, write_result
from targets_step import simulate

import pertpyro
from pertpyro.causal import average_treatment_effect
from pertpyro.data._loader import make_loader
from pertpyro.inference._lightning import SVIModule


def plant_effects(model: pertpyro.PerturbationModel, share: float, seed: int) -> None:
    """Sparse effect means of a fitted screen's size in the guide (N(0, 1); masks, if any, on there and off elsewhere)
    and library effects N(0, 0.1)."""
    generator = torch.Generator().manual_seed(seed)
    guide, program = model.guide, model.program
    with torch.no_grad():
        chosen = torch.rand(guide.effect_loc.shape, generator=generator) < share
        guide.effect_loc.copy_(torch.where(chosen, torch.randn(chosen.shape, generator=generator), 0.0))
        guide.mask_logit.copy_(torch.where(chosen, 4.0, -4.0))
        program.library_effect.copy_(0.1 * torch.randn(program.library_effect.shape, generator=generator))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, default=40_000)
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--targets", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--effect-share", type=float, default=0.05, help="share of target x gene effects planted")
    parser.add_argument("--samples", type=int, default=100, help="posterior draws of the ATE table compared")
    parser.add_argument("--max-cells", type=int, default=2000, help="population cells (model.ate's default)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    adata = simulate(args.cells, args.genes, args.targets, n_controls=args.cells // 5)
    pertpyro.setup_anndata(adata)
    model = pertpyro.PerturbationModel(adata)
    n = adata.n_obs
    target_cells = torch.from_numpy(model.cell_data.target_cells()).float()
    module = SVIModule(model.program, model.guide, n_train=n, n_val=n, lr=5e-3, target_cells=target_cells)
    optimizers = module.configure_optimizers()
    optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
    loader = make_loader(model.cell_data, batch_size=args.batch_size, shuffle=True, seed=0)
    batches = [batch for _, batch in zip(range(args.steps + 1), loader, strict=False)]
    sparse = bool(module.sparse_targets)

    def step(b: dict) -> None:
        loss = module._loss(b, n, sparse=sparse)
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()

    step(batches[0])  # warm-up
    t0 = time.process_time()
    for b in batches[1:]:
        step(b)
    step_s = (time.process_time() - t0) / args.steps
    steps_per_epoch = int(np.ceil(0.9 * n / args.batch_size))
    epoch_s = step_s * steps_per_epoch
    plant_effects(model, args.effect_share, seed=0)
    population = model._population(None, args.max_cells, 0)
    labels = list(model.registry.targets)
    t0 = time.process_time()
    ate = average_treatment_effect(
        model.program, model.guide, population, labels, model.registry, n_samples=args.samples, estimator="table"
    )
    ate_s = time.process_time() - t0
    assert len(ate) == len(labels) * args.genes
    rows = [
        [
            args.cells,
            args.genes,
            args.targets,
            args.batch_size,
            sparse,
            step_s,
            epoch_s,
            ate_s,
            ate_s / epoch_s,
        ]
    ]
    print(rows, flush=True)
    write_result(
        "ate_vs_epoch",
        title="All-target ATE table against one training epoch (CPU time)",
        summary=(
            f"A simulated screen of {args.cells} cells x {args.genes} genes x {args.targets} targets; CPU seconds of "
            f"one process (one thread) on a shared CPU without a GPU. One training step (batch {args.batch_size}, "
            f"minibatch-targets step: {sparse}) takes {step_s:.2f} s, so one epoch {epoch_s:.0f} s; the table "
            f"estimator's ATE table of all {args.targets} targets (model.ate's computation: {args.samples} posterior "
            f"draws over {args.max_cells} population cells, then the means and 90% intervals) takes {ate_s:.1f} s: "
            f"{ate_s / epoch_s:.2f} epochs. The model is untrained, with effects planted in its guide (a share "
            f"{args.effect_share} of the target x gene effect means drawn from N(0, 1), the rest 0; library effects "
            "N(0, 0.1)) so that the table's grids span the ranges of a fitted screen. The epoch "
            f"extrapolates from {args.steps} steps timed in the same process."
        ),
        tables=[
            table(
                "CPU seconds, measured side by side in one process",
                [
                    "cells",
                    "genes",
                    "targets",
                    "batch",
                    "sparse_step",
                    "step_s",
                    "epoch_s",
                    "ate_s",
                    "ate_over_epoch",
                ],
                rows,
                digits=3,
            )
        ],
    )


if __name__ == "__main__":
    main()
