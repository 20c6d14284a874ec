import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pertpyro import load_run
from pertpyro.models._model import EFFICACY_INIT_LOGIT, _initial_effects

run = sys.argv[1]
_run = load_run(Path(run))
config, adata, split, parts, model = _run.config, _run.adata, _run.split, _run.subsets(), _run.model
init = _initial_effects(model._data.statistics(), float(torch.sigmoid(torch.tensor(EFFICACY_INIT_LOGIT)))).numpy()
loc = model.guide.effect_loc.detach().numpy()
sig = model.program.effect_prior_scale().detach().numpy()
print(
    f"sigma_g: median {np.median(sig):.3f}  init-rms median {np.median(np.sqrt((init**2).mean(0)).clip(0.05, 2)):.3f}"
)
eff = model.efficacy_probability()
rows = []
for t, name in enumerate(model.registry.targets):
    a, b = init[t], loc[t]
    slope = (a @ b) / (a @ a)
    rows.append(
        (name, np.corrcoef(a, b)[0, 1], slope, np.abs(b).mean(), np.abs(a).mean(), float(eff.get(name, np.nan)))
    )
df = pd.DataFrame(rows, columns=["target", "corr(init,loc)", "slope loc~init", "mean|loc|", "mean|init|", "efficacy"])
print(df.to_string(float_format="{:.3f}".format))
print("epochs", len(model.history_) if model.history_ is not None else None)
