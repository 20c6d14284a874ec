import sys
from pathlib import Path

import numpy as np
import pandas as pd

from pertpyro import PerturbationModel, cli

run = Path(sys.argv[1])
config = cli.load_config(run / "config.yaml")
adata = cli.load_data(config)
split = pd.read_csv(run / "split.csv", index_col=0)["split"]
parts = cli._subsets(adata, split)
model = PerturbationModel.load(run, parts["train"])
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
