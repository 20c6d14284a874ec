"""Score saved draws: python score.py FILE... ; mean metrics (match=1 files) or coverage (match=0 files)."""

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from pertpyro import load_run
from pertpyro.evaluation._calibration import heldout_reference, interval_coverage
from pertpyro.evaluation._metrics import CHUNK_SIZE, label_moments, shift_from_moments, shift_metrics

run = Path("/tmp/pap/run0")
_run = load_run(run, model=False)
config, adata, split = _run.config, _run.adata, _run.split
test = _run.subsets()["test"]
mom = label_moments(test, chunk_size=CHUNK_SIZE)
obs = shift_from_moments(mom, "control", reference="control")
for f in sys.argv[1:]:
    z = np.load(f)
    d, labels, genes = z["draws"], list(z["labels"]), list(z["genes"])
    if "_m1" in f:
        pred = pd.DataFrame(d.mean(0), index=labels, columns=genes)
        per = shift_metrics(pred, obs.loc[labels, genes], top_k=20)
        m = per[["pearson_all", "pearson_topk", "mse_all"]].mean()
        print(
            f"{Path(f).name}: pearson_all {m.pearson_all:.4f} top20 {m.pearson_topk:.4f} mse {m.mse_all:.5f}  sd(draws) median {np.median(d.std(0)):.4f}"
        )
    else:
        o, se = heldout_reference(test, labels)
        cov = interval_coverage(d, o[genes].to_numpy(), reference_se=se[genes].to_numpy())
        print(
            f"{Path(f).name}: sd(draws) median {np.median(d.std(0)):.4f} mean {d.std(0).mean():.4f}; coverage",
            " ".join(
                f"{lev:.2f}:{c:.3f}/{w:.4f}" for lev, c, w in zip(cov.level, cov.coverage, cov.mean_width, strict=False)
            ),
        )
