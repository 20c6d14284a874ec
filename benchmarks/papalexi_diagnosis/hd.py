"""python hd.py RUN OUT S R SEED: heldout_draws (both weightings from one simulation)."""

import sys
import time
from pathlib import Path

import numpy as np

from pertpyro import load_run
from pertpyro.evaluation._draws import heldout_draws

run, out, S, R, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
_run = load_run(Path(run))
config, adata, split, parts, model = _run.config, _run.adata, _run.split, _run.subsets(), _run.model
labels = sorted(set(parts["test"].obs["perturbation"].astype(str)) - {"control"})
t0 = time.process_time()
w0 = time.perf_counter()
m, s = heldout_draws(model, labels, n_samples=S, seed=seed, n_counts=R)
print(
    f"hd S={S} R={R} seed={seed}: cpu {time.process_time() - t0:.1f} s wall {time.perf_counter() - w0:.1f} s",
    flush=True,
)
np.savez(out + "_m1.npz", draws=m.numpy(), labels=np.array(labels), genes=np.array(model.registry.genes))
np.savez(out + "_m0.npz", draws=s.numpy(), labels=np.array(labels), genes=np.array(model.registry.genes))
