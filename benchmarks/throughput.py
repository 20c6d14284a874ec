"""Training throughput of pertpyro's Pyro ELBO against a hand-written plain-PyTorch ELBO of the same model.

All three train the same ``PerturbationProgram``/``PerturbationGuide`` parameters on the same minibatches
(shipped Papalexi screen) with Adam: the training step of ``model.train`` (Pyro, :class:`CellEnumELBO`), the
same step with Pyro's general ``TraceEnum_ELBO``, and a plain version that writes out the same negative ELBO by
hand (efficacy summed out with ``logsumexp``, local terms scaled by ``N / B``). Epochs rotate between them so
that machine noise hits all alike, in reversed order every other round (none always runs after the same one); the
ratio of median cells/s (training step / hand-written) is printed.

Run: ``python benchmarks/throughput.py --epochs 7 --skip-trace-enum [--threads 1]``. Writes
``benchmarks/results/throughput.json``: one row per batch size, thread count and allocator setting (a run replaces
the rows of its own setting and keeps the others).
"""

from __future__ import annotations

import argparse
import statistics
import time

import pyro
import pyro.distributions as dist
import torch
from _results import command_line, merged_rows, table, write_result
from pyro.infer import TraceEnum_ELBO

import pertpyro
from pertpyro._settings import local_params
from pertpyro.data._loader import CellData, make_loader, program_args
from pertpyro.inference._lightning import SVIModule
from pertpyro.inference._memory import keep_freed_memory
from pertpyro.module._program import MAX_PLATE_NESTING


def plain_torch_loss(program, guide, counts, perturbation, batch_index, library, idx, n_cells, artifact=None):
    """Negative ELBO of the same model, written without Pyro's machinery (one particle)."""
    scale = n_cells / idx.shape[0]
    # global sites
    q_effect = dist.Normal(guide.effect_loc, guide.effect_scale())
    effect = q_effect.rsample()
    p_effect = program.effect_prior()
    kl_global = (q_effect.log_prob(effect) - p_effect.log_prob(effect)).sum()
    if program.sparse_effects:
        q_mask = dist.RelaxedBernoulliStraightThrough(guide.mask_temperature, logits=guide.mask_logit)
        mask = q_mask.rsample()
        p_mask = dist.RelaxedBernoulliStraightThrough(
            program.mask_temperature, logits=program.mask_prior_logit.expand_as(guide.mask_logit)
        )
        kl_global = kl_global + (q_mask.log_prob(mask) - p_mask.log_prob(mask)).sum()
        effect = effect * mask
    if program.use_efficacy:
        q_rate = guide.efficacy_distribution()
        rate = q_rate.rsample()
        p_rate = dist.Beta(1.0, 1.0).expand(rate.shape)
        kl_global = kl_global + (q_rate.log_prob(rate) - p_rate.log_prob(rate)).sum()
    # local sites
    loc, sd = guide.encoder(counts, batch_index, perturbation)
    z = loc + sd * torch.randn_like(loc)
    kl_z = (dist.Normal(loc, sd).log_prob(z) - dist.Normal(0.0, 1.0).log_prob(z)).sum(-1)
    log_d = dist.Bernoulli(program.target_frequency).log_prob(perturbation).sum(-1)
    base = program.decoder(z, batch_index)
    shift = perturbation @ effect
    log_lib = torch.log(library)
    lib_loc = program.library_loc[batch_index]
    lib_scale = torch.nn.functional.softplus(program.library_raw_scale[batch_index]) + 1e-3
    nb = program.nb_distribution
    if program.use_efficacy:
        p = program.response_probability(perturbation, rate)
        lib_both = dist.Normal(torch.stack([lib_loc, lib_loc + perturbation @ program.library_effect]), lib_scale)
        both = nb(torch.stack([base, base + shift]), log_lib).log_prob(counts).sum(-1) + lib_both.log_prob(log_lib)
        ll = torch.logsumexp(torch.stack([torch.log1p(-p), torch.log(p)]) + both, 0)
    else:
        lib = dist.Normal(lib_loc + perturbation @ program.library_effect, lib_scale).log_prob(log_lib)
        ll = nb(base + shift, log_lib).log_prob(counts).sum(-1) + lib
    return (kl_global - scale * (ll + log_d - kl_z).sum()) / n_cells


def _epoch(step, loader, n_cells) -> float:
    start = time.perf_counter()
    seen = 0
    for batch in loader:
        step(batch)
        seen += batch["idx"].shape[0]
    return seen / (time.perf_counter() - start)


def add_machine_arguments(parser: argparse.ArgumentParser, threads: int) -> None:
    """``--threads`` and ``--default-malloc``, shared with ``step_time.py``."""
    parser.add_argument("--threads", type=int, default=threads)
    parser.add_argument(
        "--default-malloc", action="store_true", help="keep glibc's default allocator settings (training tunes them)"
    )


def setup_machine(args: argparse.Namespace) -> bool:
    """Set the torch threads and tune the allocator as ``model.train`` does (both sides alike); whether tuned."""
    torch.set_num_threads(args.threads)
    return False if args.default_malloc else keep_freed_memory()


THROUGHPUT_SUMMARY = (
    "Training speed of pertpyro's Pyro training step (CellEnumELBO, as model.train runs it) against a hand-written "
    "plain-PyTorch negative ELBO of the same model, both training the same parameters on the same minibatches of the "
    "shipped Papalexi screen with Adam, epochs run in rotation so that machine noise hits both alike. The table shows "
    "the median cells/s per epoch of each and their ratio (pertpyro / hand-written; 1 means equal speed), per thread "
    "count, batch size and allocator setting (model.train keeps freed memory for reuse; glibc defaults hand it back "
    "after every step)."
)
COLUMNS = [
    "threads",
    "allocator",
    "batch",
    "epochs",
    "pertpyro cells/s",
    "TraceEnum_ELBO cells/s",
    "hand-written cells/s",
    "ratio",
    "command",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, nargs="+", default=[512, 2048])
    add_machine_arguments(parser, threads=2)
    parser.add_argument(
        "--skip-trace-enum", action="store_true", help="leave out the (slow) TraceEnum_ELBO column; ratio unaffected"
    )
    args = parser.parse_args()
    tuned = setup_machine(args)
    adata = pertpyro.datasets.papalexi2021()
    pertpyro.setup_anndata(adata, batch_key="bio_rep")
    model = pertpyro.PerturbationModel(adata, latent_dim=10)
    data = CellData(adata, model.registry)
    n = len(data)
    module = SVIModule(model.program, model.guide, n_train=n, n_val=n, lr=1e-3)
    optim = torch.optim.Adam(module.parameters(), lr=1e-3)

    def pyro_step(batch):
        loss = module._loss(batch, n)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()

    trace_enum = TraceEnum_ELBO(max_plate_nesting=MAX_PLATE_NESTING)

    def trace_enum_step(batch):
        with local_params():
            loss = trace_enum.differentiable_loss(model.program, model.guide, *program_args(batch, n)) / n
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()

    def torch_step(batch):
        loss = plain_torch_loss(model.program, model.guide, *program_args(batch, n))
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()

    with pyro.validation_enabled(False):  # both without argument checks, as in training
        batch = next(iter(make_loader(data, batch_size=512, shuffle=True, seed=0)))
        with torch.no_grad():
            a = statistics.mean(
                float(module.elbo.loss(model.program, model.guide, *program_args(batch, n))) / n for _ in range(20)
            )
            b = statistics.mean(
                float(plain_torch_loss(model.program, model.guide, *program_args(batch, n))) for _ in range(20)
            )
        print(f"negative ELBO per cell, mean of 20 draws: pyro {a:.3f}  plain torch {b:.3f}")
        print(
            f"cells/s per epoch (median of {args.epochs}, {args.threads} threads, {n} cells x {adata.n_vars} genes, "
            f"allocator {'tuned as in training' if tuned else 'glibc defaults'})"
        )
        print(
            "| batch | pertpyro training step (CellEnumELBO) | Pyro TraceEnum_ELBO | hand-written PyTorch ELBO | ratio |"
        )
        print("| --- | --- | --- | --- | --- |")
        steps = {"pertpyro": pyro_step, "trace_enum": trace_enum_step, "torch": torch_step}
        if args.skip_trace_enum:
            del steps["trace_enum"]
        details, medians = [], []
        for batch_size in args.batch_size:
            loader = make_loader(data, batch_size=batch_size, shuffle=True, seed=0)
            for step in steps.values():  # warm-up
                _epoch(step, loader, n)
            rates = {name: [] for name in steps}
            for epoch in range(args.epochs):  # rotate, so machine noise hits all alike; reverse every other round
                for name, step in list(steps.items())[:: 1 if epoch % 2 == 0 else -1]:
                    rates[name].append(_epoch(step, loader, n))
            med = {name: statistics.median(r) for name, r in rates.items()}
            medians.append(med)
            details.append(
                f"batch {batch_size}: " + "; ".join(f"{k} {[round(x) for x in r]}" for k, r in rates.items())
            )
            print(
                f"| {batch_size} | {med['pertpyro']:,.0f} | {med.get('trace_enum', float('nan')):,.0f} | {med['torch']:,.0f} "
                f"| {med['pertpyro'] / med['torch']:.2f} |",
                flush=True,
            )
        print("cells/s of each epoch:", *details, sep="\n")
    allocator = "tuned as in training" if tuned else "glibc defaults"
    command = command_line()
    rows = [
        [
            args.threads,
            allocator,
            size,
            args.epochs,
            m["pertpyro"],
            m.get("trace_enum"),
            m["torch"],
            m["pertpyro"] / m["torch"],
            command,
        ]
        for size, m in zip(args.batch_size, medians, strict=True)
    ]
    write_result(
        "throughput",
        title="Training throughput",
        command="python benchmarks/throughput.py --epochs 7 --skip-trace-enum [--threads 1] [--default-malloc]",
        summary=THROUGHPUT_SUMMARY + f" Negative ELBO per cell on one minibatch, mean of 20 draws: pertpyro {a:.2f}, "
        f"hand-written {b:.2f}.",
        tables=[
            table(
                f"Cells/s per epoch, median of the epochs run in rotation ({n} cells x {adata.n_vars} genes)",
                COLUMNS,
                merged_rows("throughput", COLUMNS, rows, key=COLUMNS[:3]),
                digits=2,
            )
        ],
    )


if __name__ == "__main__":
    main()
