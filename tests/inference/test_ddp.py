"""Data-parallel training (Lightning DDP, gloo backend on CPU, 2 processes).

Each process trains on its own shard of the cells while the ``cells`` plate keeps the size of the whole training set,
so every process's loss is an unbiased estimate of the full-data ELBO per cell, as in one process. The multi-process
runs go through a small script in a subprocess with a timeout, so a hanging process group cannot block the test run.
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from pertpyro.data._loader import CellData, DistributedBatchSampler, make_loader, shard_loader
from pertpyro.data._registry import get_registry

TIMEOUT_S = 300

SCRIPT = r'''
"""Runs one multi-process job of tests/inference/test_ddp.py; writes its results under $PERTPYRO_DDP_OUT."""
import os
import sys
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(1)  # two processes on two cores

import pertpyro
from pertpyro.data._loader import CellData, make_loader
from pertpyro.inference._lightning import SVIModule, fit

OUT = Path(os.environ["PERTPYRO_DDP_OUT"])


def data():
    adata = pertpyro.datasets.simulate(n_cells=600, n_genes=30, n_targets=3, n_truth_cells=0, seed=0)
    pertpyro.setup_anndata(adata, batch_key="batch")
    return adata


class Recorder(SVIModule):
    """Records each step's loss and cells, per process."""

    def on_fit_start(self):
        self.steps = []

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.steps.append((self.current_epoch, float(loss.detach()), batch["idx"].tolist()))
        return loss

    def on_train_end(self):
        name = f"steps{self.trainer.world_size}_rank{self.global_rank}.npz"
        epoch, loss, idx = zip(*self.steps)
        np.savez(OUT / name, epoch=np.array(epoch), loss=np.array(loss), idx=np.array(idx, dtype=object))


def elbo(devices, strategy):
    """Fixed parameters (lr=0): per-step ELBO estimates over 10 epochs of 60-cell minibatches."""
    adata = data()
    model = pertpyro.PerturbationModel(adata, latent_dim=4, n_hidden=16, seed=0)
    cells = CellData(adata, model.registry)
    module = Recorder(model.program, model.guide, n_train=len(cells), n_val=len(cells), lr=0.0, seed=0)
    history = fit(
        module,
        make_loader(cells, batch_size=60, shuffle=True, seed=0),
        make_loader(cells, batch_size=600, shuffle=False),
        max_epochs=10,
        accelerator="cpu",
        devices=devices,
        strategy=strategy,
        early_stopping=False,
        progress_bar=False,
    )
    if module.global_rank == 0:
        history.to_csv(OUT / f"history{devices}.csv", index=False)


def save_state(module):
    """Each worker process's parameters at the end of training (patched into SVIModule below)."""
    torch.save(module.state_dict(), OUT / f"rank{module.global_rank}.pt")


def train():
    """PerturbationModel.train on two spawned processes; what the calling process holds afterwards."""
    model = pertpyro.PerturbationModel(data(), latent_dim=4, n_hidden=16, seed=0)
    torch.save({k: v.clone() for k, v in model.program.state_dict().items()}, OUT / "init.pt")
    history = model.train(
        max_epochs=3, batch_size=64, accelerator="cpu", devices=2, strategy="ddp_spawn", progress_bar=False
    )
    history.to_csv(OUT / "history.csv", index=False)
    torch.save({"program": model.program.state_dict(), "guide": model.guide.state_dict()}, OUT / "parent.pt")
    (OUT / "trained").write_text(str(model.is_trained))


if sys.argv[1] == "train":  # module level, so the spawned workers (which import this file) get it too
    SVIModule.on_train_end = save_state

if __name__ == "__main__":
    if sys.argv[1] == "elbo":
        if os.environ.get("LOCAL_RANK", "0") == "0":  # Lightning re-runs this script for rank 1 of "ddp"
            elbo(1, "auto")
        elbo(2, "auto")  # two CPU devices: Lightning picks "ddp" (this script re-run per process)
    else:
        train()
'''


def _run(tmp_path: Path, job: str) -> Path:
    """Run the script's ``job`` with 2 processes; kill the whole process group if it exceeds the timeout."""
    out = tmp_path / job
    out.mkdir()
    script = tmp_path / "ddp_job.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PERTPYRO_DDP_OUT": str(out), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(
        [sys.executable, str(script), job],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: the DDP workers die with it on a timeout
    )
    try:
        log, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        log, _ = proc.communicate()
        pytest.fail(f"The 2-process {job} job hung for {TIMEOUT_S} s:\n{log[-4000:]}")
    assert proc.returncode == 0, log[-6000:]
    return out


def _steps(out: Path, world_size: int) -> list[dict[str, np.ndarray]]:
    files = [np.load(out / f"steps{world_size}_rank{r}.npz", allow_pickle=True) for r in range(world_size)]
    return [{k: f[k] for k in ("epoch", "loss", "idx")} for f in files]


def _cells(steps: dict[str, np.ndarray], epoch: int) -> np.ndarray:
    return np.concatenate([np.asarray(i, dtype=np.int64) for i in steps["idx"][steps["epoch"] == epoch]])


# ------------------------------------------------------------------ the sampler (no processes)
@pytest.mark.parametrize("n_cells", [600, 601, 7])
@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("batch_size", [1, 60, 128])
def test_shards_disjoint_cover_equal_steps(n_cells, world_size, batch_size):
    for shuffle in (True, False):
        orders = []
        for epoch in (0, 1):
            ranks = []
            for rank in range(world_size):
                sampler = DistributedBatchSampler(
                    n_cells, batch_size, shuffle=shuffle, seed=3, num_replicas=world_size, rank=rank
                )
                sampler.set_epoch(epoch)
                batches = list(sampler)
                assert len(batches) == len(sampler)
                assert all(1 <= len(b) <= batch_size + 1 for b in batches)
                ranks.append(batches)
            assert len({len(b) for b in ranks}) == 1  # same number of steps on every process (DDP needs it)
            cells = np.concatenate([np.concatenate(b) for b in ranks])
            assert len(cells) == n_cells
            assert set(cells.tolist()) == set(range(n_cells))
            orders.append(cells)
        assert np.array_equal(orders[0], orders[1]) != shuffle  # shuffled: a new order every epoch


def test_sampler_reads_one_process_without_process_group():
    sampler = DistributedBatchSampler(10, 4, shuffle=False)
    assert [len(b) for b in sampler] == [4, 3, 3]
    assert len(sampler) == 3
    with pytest.raises(ValueError, match="cannot be split"):
        list(DistributedBatchSampler(1, 4, shuffle=False, num_replicas=2, rank=1))
    with pytest.raises(ValueError, match="rank"):
        DistributedBatchSampler(10, 4, shuffle=False, num_replicas=2, rank=2)


def test_shard_loader_keeps_batches_and_seed(tiny_adata):
    data = CellData(tiny_adata, get_registry(tiny_adata))
    single = make_loader(data, batch_size=32, shuffle=True, seed=5)
    assert not isinstance(single.sampler, DistributedBatchSampler)  # one process: the loader is unchanged
    sharded = shard_loader(single)
    assert isinstance(sharded.sampler, DistributedBatchSampler)
    assert sharded.dataset is data
    assert (sharded.sampler.batch_size, sharded.sampler.shuffle, sharded.sampler.seed) == (32, True, 5)
    assert not shard_loader(make_loader(data, batch_size=8, shuffle=False)).sampler.shuffle
    with pytest.raises(TypeError, match="make_loader"):
        shard_loader(DataLoader(list(range(4)), batch_size=2))


# ------------------------------------------------------------------ two processes
def test_two_process_elbo_matches_one_process(tmp_path):
    out = _run(tmp_path, "elbo")
    (one,) = _steps(out, 1)
    two = _steps(out, 2)
    # Lightning kept our sampler: in every epoch the two processes saw disjoint cells covering the data, in a new order.
    for epoch in range(10):
        a, b = _cells(two[0], epoch), _cells(two[1], epoch)
        assert not set(a.tolist()) & set(b.tolist())
        assert len(a) + len(b) == 600
    assert not np.array_equal(_cells(two[0], 0), _cells(two[0], 1))
    # The ELBO estimate with fixed parameters: mean per-step loss, 100 steps each way (10 epochs of 10 minibatches).
    # Tolerance: 4 standard errors of the difference of the two means, from the observed per-step spread (sd ~3.5
    # nats per cell), treating steps as independent. That over-states the noise (within an epoch the disjoint
    # minibatches' composition errors cancel), so the check is conservative: the tolerance is ~2 nats on ~147.
    l1, l2 = one["loss"], np.concatenate([two[0]["loss"], two[1]["loss"]])
    tolerance = 4 * np.sqrt(l1.var(ddof=1) / len(l1) + l2.var(ddof=1) / len(l2))
    assert abs(l2.mean() - l1.mean()) < tolerance, (l1.mean(), l2.mean(), tolerance)
    # The logged epoch losses are averaged across the processes (sync_dist), not rank 0's alone.
    h1, h2 = pd.read_csv(out / "history1.csv"), pd.read_csv(out / "history2.csv")
    both = pd.Series(l2).groupby(np.concatenate([two[0]["epoch"], two[1]["epoch"]])).mean()
    np.testing.assert_allclose(h2["train_loss"], both.to_numpy(), rtol=1e-5)
    v1, v2 = h1["val_loss"].to_numpy(), h2["val_loss"].to_numpy()
    assert abs(v2.mean() - v1.mean()) < 4 * np.sqrt(v1.var(ddof=1) / len(v1) + v2.var(ddof=1) / len(v2))


def test_two_process_training_leaves_trained_weights_in_the_model(tmp_path):
    out = _run(tmp_path, "train")
    history = pd.read_csv(out / "history.csv")
    assert list(history["epoch"]) == [0, 1, 2]
    assert history[["train_loss", "val_loss"]].notna().all().all()
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    assert (out / "trained").read_text() == "True"
    parent = torch.load(out / "parent.pt")
    init = torch.load(out / "init.pt")
    ranks = [torch.load(out / f"rank{r}.pt") for r in (0, 1)]
    for name, value in parent["program"].items():
        # The calling process holds rank 0's trained weights, which DDP kept equal to rank 1's.
        assert torch.equal(value, ranks[0][f"program.{name}"]), name
        assert torch.equal(value, ranks[1][f"program.{name}"]), name
    for name, value in parent["guide"].items():
        assert torch.equal(value, ranks[0][f"guide.{name}"]), name
    changed = [n for n, v in init.items() if v.is_floating_point() and not torch.equal(v, parent["program"][n])]
    assert changed, "training did not change the parameters of the calling process's model"
