"""Time per training step, pertpyro's Pyro step vs the hand-written PyTorch ELBO of the same model, side by side.

Unlike ``throughput.py`` (cells/s per epoch, wall clock, data loading included) this times only the step (loss,
backward, Adam) on 30 fixed minibatches of the shipped Papalexi data, one torch thread by default, four rounds in alternating
order, and reports the minimum time per step of each: the least noisy comparison on a shared machine.

Run: ``python benchmarks/step_time.py [--batch-size 512] [--threads 1]``. Both sides run without argument checks (as
training does). Writes ``benchmarks/results/step_time.json``: one row per batch size, thread count and allocator
setting (a run replaces the row of its own setting and keeps the others).
"""

import argparse
import time

import pyro
import torch
from _results import command_line, merged_rows, table, write_result
from throughput import add_machine_arguments, plain_torch_loss, setup_machine

import pertpyro
from pertpyro.data._loader import make_loader
from pertpyro.inference._lightning import SVIModule

SUMMARY = (
    "Time per training step (loss, backward, Adam) of pertpyro's Pyro training step against a hand-written "
    "plain-PyTorch negative ELBO of the same model, on the same fixed minibatches of the shipped Papalexi screen, in "
    "alternating rounds; the minimum over rounds is the least noisy comparison on a shared machine. The ratio is "
    "hand-written time / pertpyro time (1 means equal speed)."
)
COLUMNS = ["batch", "threads", "allocator", "rounds", "pertpyro ms", "hand-written ms", "ratio", "command"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=4)
    add_machine_arguments(parser, threads=1)
    args = parser.parse_args()
    tuned = setup_machine(args)
    adata = pertpyro.datasets.papalexi2021()
    pertpyro.setup_anndata(adata, perturbation_key="perturbation", control="control", batch_key="bio_rep")
    model = pertpyro.PerturbationModel(adata, latent_dim=10)
    n = adata.n_obs
    module = SVIModule(model.program, model.guide, n_train=n, n_val=n, lr=1e-3)
    optim = torch.optim.Adam(module.parameters(), lr=1e-3)
    loader = make_loader(model.cell_data, batch_size=args.batch_size, shuffle=True, seed=0)
    batches = [batch for _, batch in zip(range(30), loader, strict=False)]

    def pyro_step(b: dict) -> None:
        loss = module._loss(b, n)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()

    def torch_step(b: dict) -> None:
        loss = plain_torch_loss(
            model.program,
            model.guide,
            b["counts"],
            b["perturbation"],
            b["batch_index"],
            b["library"],
            b["idx"],
            n,
            b.get("artifact"),
        )
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()

    times = {"pyro": [], "torch": []}
    steps = [("pyro", pyro_step), ("torch", torch_step)]
    with pyro.validation_enabled(False):  # both sides without argument checks, as in training
        for r in range(args.rounds):
            for name, step in steps[:: 1 if r % 2 == 0 else -1]:
                start = time.perf_counter()
                for b in batches:
                    step(b)
                times[name].append((time.perf_counter() - start) / len(batches) * 1000)
    pyro_ms, torch_ms = min(times["pyro"]), min(times["torch"])
    print(f"allocator {'tuned as in training' if tuned else 'glibc defaults'}, {args.threads} thread(s)")
    print(f"batch {args.batch_size}: ms per step, pertpyro {pyro_ms:.2f}, hand-written {torch_ms:.2f}")
    print(f"ratio (hand-written / pertpyro time) {torch_ms / pyro_ms:.3f}")
    allocator = "tuned as in training" if tuned else "glibc defaults"
    row = [args.batch_size, args.threads, allocator, args.rounds, pyro_ms, torch_ms, torch_ms / pyro_ms, command_line()]
    write_result(
        "step_time",
        title="Time per training step",
        command="python benchmarks/step_time.py --batch-size B --rounds 6 [--default-malloc]",
        summary=SUMMARY,
        tables=[
            table(
                f"Milliseconds per training step, minimum over the rounds ({len(batches)} fixed minibatches each)",
                COLUMNS,
                merged_rows("step_time", COLUMNS, [row], key=COLUMNS[:3]),
                digits=2,
            )
        ],
    )


if __name__ == "__main__":
    main()
