import sys
from pathlib import Path

import numpy as np

from pertpyro import load_run

run = Path(sys.argv[1])
_run = load_run(run)
config, adata, split, parts, model = _run.config, _run.adata, _run.split, _run.subsets(), _run.model
tr = parts["train"]
z = model.get_latent_representation(tr)
lab = tr.obs["perturbation"].astype(str).to_numpy()
zc = z[lab == "control"]
print(f"control z mean norm {np.linalg.norm(zc.mean(0)):.3f}, per-dim sd {zc.std(0).mean():.3f}")
for t in ["STAT1", "IFNGR2", "JAK2", "SMAD4", "IFNGR1", "IRF1", "NFKBIA", "ATF2", "CD86"]:
    zt = z[lab == t]
    d = zt.mean(0) - zc.mean(0)
    print(
        f"{t:7s} n={len(zt):4d} |mean z - control mean z| = {np.linalg.norm(d):.3f}  (in control sds: {np.linalg.norm(d / zc.std(0)):.2f})"
    )
