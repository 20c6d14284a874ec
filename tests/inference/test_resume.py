"""A fit killed with SIGKILL and resumed from its last checkpoint ends where an uninterrupted fit ends."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

SCRIPT = textwrap.dedent(
    """
    import sys, time
    import torch
    torch.set_num_threads(1)
    import pertpyro
    from pertpyro.inference import SVIModule

    out, mode = sys.argv[1], sys.argv[2]
    if mode == "slow":  # time to kill it between epochs; sleeping changes no number
        SVIModule.on_train_epoch_end = lambda self: time.sleep(0.4)
    adata = pertpyro.datasets.simulate(n_cells=300, n_genes=15, n_targets=3, seed=0)
    pertpyro.setup_anndata(adata, batch_key="batch")
    model = pertpyro.PerturbationModel(adata, latent_dim=2, n_hidden=8)
    model.train(
        max_epochs=6, batch_size=64, seed=3, progress_bar=False, early_stopping=False,
        checkpoint_dir=out + "/checkpoints",
        ckpt_path=out + "/checkpoints/last.ckpt" if mode == "resume" else None,
    )
    state = {**{"program." + k: v for k, v in model.program.state_dict().items()},
             **{"guide." + k: v for k, v in model.guide.state_dict().items()}}
    torch.save(state, out + "/final.pt")
    model.history_.to_csv(out + "/history.csv", index=False)
    """
)


def _run(tmp_path, out, mode, **kwargs):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    return subprocess.Popen([sys.executable, str(script), str(out), mode], env=env, **kwargs)


@pytest.mark.skipif(sys.platform.startswith("win"), reason="SIGKILL")
def test_killed_fit_resumes_to_the_uninterrupted_result(tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    full.mkdir()
    killed.mkdir()
    reference = _run(tmp_path, full, "plain", stderr=subprocess.PIPE)
    victim = _run(tmp_path, killed, "slow", stderr=subprocess.PIPE)
    last = killed / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    while not last.exists() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert last.exists(), victim.stderr.read().decode()[-2000:] if victim.poll() is not None else "no checkpoint"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    victim.stderr.close()
    assert not (killed / "final.pt").exists()  # it did not finish
    resumed = _run(tmp_path, killed, "resume", stderr=subprocess.PIPE)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err.decode()[-3000:]
    _, err = reference.communicate(timeout=300)
    assert reference.returncode == 0, err.decode()[-3000:]
    a, b = torch.load(full / "final.pt"), torch.load(killed / "final.pt")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)
    import pandas as pd

    history_full, history_resumed = pd.read_csv(full / "history.csv"), pd.read_csv(killed / "history.csv")
    assert list(history_resumed["epoch"]) == list(range(6))
    np.testing.assert_allclose(history_full.to_numpy(), history_resumed.to_numpy(), rtol=1e-5)
    assert (killed / "checkpoints" / "best.ckpt").exists()


def test_ctrl_c_reraises_keyboard_interrupt_and_keeps_a_consistent_model(monkeypatch):
    import pertpyro
    from pertpyro.inference import SVIModule

    adata = pertpyro.datasets.simulate(n_cells=300, n_genes=15, n_targets=3, seed=0)
    pertpyro.setup_anndata(adata, batch_key="batch")
    model = pertpyro.PerturbationModel(adata, latent_dim=2, n_hidden=8)

    def press_ctrl_c(self):
        if self.current_epoch == 1:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(SVIModule, "on_train_epoch_end", press_ctrl_c)
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        model.train(max_epochs=10, batch_size=64, progress_bar=False, early_stopping=False)
    assert signal.getsignal(signal.SIGINT) is handler  # Lightning's SIG_IGN is not left behind
    assert model.is_trained
    assert list(model.history_["epoch"]) == [0, 1]  # the epochs that finished (stopped after one more step)
    params = list(model.program.parameters()) + list(model.guide.parameters())
    assert all(p.device.type == "cpu" and bool(torch.isfinite(p).all()) for p in params)
    assert model.ate(["T0"] if "T0" in model.registry.targets else None, n_samples=2).shape[0] > 0
