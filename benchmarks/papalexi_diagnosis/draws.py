"""Save ATE draws of a saved run: python draws.py RUN OUT S R SEED MATCH"""

import sys
import time
from pathlib import Path

import numpy as np

from pertpyro import load_run
from pertpyro.causal import _ate
from pertpyro.causal._ate import label_shift_draws

run, out, S, R, seed, match = (
    sys.argv[1],
    sys.argv[2],
    int(sys.argv[3]),
    int(sys.argv[4]),
    int(sys.argv[5]),
    int(sys.argv[6]),
)
_run = load_run(Path(run))
config, adata, split, parts, model = _run.config, _run.adata, _run.split, _run.subsets(), _run.model
labels = sorted(set(parts["test"].obs["perturbation"].astype(str)) - {"control"})
pop = model._population(None, 2000, seed)
weights = model._batch_weights(labels, pop) if match else None
orig = _ate.simulate_label_means


def patched(*a, **k):
    k["n_counts"] = R
    return orig(*a, **k)


_ate.simulate_label_means = patched
t0 = time.process_time()
w0 = time.perf_counter()
d = label_shift_draws(model.program, model.guide, pop, labels, model.registry, n_samples=S, weights=weights, seed=seed)
print(
    f"S={S} R={R} seed={seed} match={match}: cpu {time.process_time() - t0:.1f} s wall {time.perf_counter() - w0:.1f} s",
    flush=True,
)
np.savez(out, draws=d.numpy(), labels=np.array(labels), genes=np.array(model.registry.genes))
