import sys
from pathlib import Path

import numpy as np
import pandas as pd

from pertpyro import evaluation, load_run
from pertpyro.evaluation._metrics import CHUNK_SIZE, label_moments, shift_from_moments

run = Path("/tmp/pap/run0")
_run = load_run(run, model=False)
config, adata, split = _run.config, _run.adata, _run.split
parts = _run.subsets()
obs = shift_from_moments(label_moments(parts["test"], chunk_size=CHUNK_SIZE), "control", reference="control")
z = np.load(sys.argv[1])
labels = list(z["labels"])
genes = list(z["genes"])
pred = pd.DataFrame(z["draws"].mean(0), index=labels, columns=genes)
tm = evaluation.training_mean(parts["train"], labels)[genes]
for lab in ["STAT1", "IFNGR2", "JAK2", "SMAD4", "IFNGR1", "IRF1", "NFKBIA", "ATF2"]:
    o = obs.loc[lab, genes].to_numpy()
    top = np.argsort(-np.abs(o))[:20]
    p, t = pred.loc[lab].to_numpy(), tm.loc[lab].to_numpy()

    def sl(a, b):
        return (a @ b) / (b @ b)

    print(
        f"{lab:7s} top20: slope(model~obs) {sl(p[top], o[top]):.2f} slope(tm~obs) {sl(t[top], o[top]):.2f} r(model,tm) {np.corrcoef(p[top], t[top])[0, 1]:.3f}; all genes slope(model~tm) {sl(p, t):.2f} r {np.corrcoef(p, t)[0, 1]:.3f}"
    )
    if lab in ("STAT1", "JAK2"):
        for g in top[:8]:
            print(f"    {genes[g]:8s} obs {o[g]:+.3f} tm {t[g]:+.3f} model {p[g]:+.3f}")
