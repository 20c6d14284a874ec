"""Fit a Papalexi variant and score posterior-mean predictions: python quick.py NAME SEED [key=value ...]
keys: model.X / train.X config overrides; zero_init=1 starts effect means at zero."""

import sys
import time
from pathlib import Path

import pandas as pd
import torch
import yaml

from pertpyro import PerturbationModel, cli, evaluation
from pertpyro.evaluation._draws import heldout_draws
from pertpyro.models import _model as M

name, seed = sys.argv[1], int(sys.argv[2])
cfg = yaml.safe_load(open("configs/papalexi.yaml"))
cfg["train"]["seed"] = seed
cfg["output"] = f"/tmp/pap/q_{name}_s{seed}"
zero_init = False
eff_targets = None
n_mean = 100
for kv in sys.argv[3:]:
    k, v = kv.split("=")
    v = yaml.safe_load(v)
    if k == "zero_init":
        zero_init = bool(v)
        continue
    if k == "eff_targets":  # the efficacy mixture only for these targets (others: every cell responds)
        eff_targets = set(str(v).split(","))
        continue
    if k == "n_mean":
        n_mean = int(v)
        continue
    sec, key = k.split(".")
    cfg[sec][key] = v
if eff_targets is not None:
    from pertpyro.data._registry import get_registry
    from pertpyro.models._program import PerturbationProgram

    _registry_targets = None
    _orig_rp = PerturbationProgram.response_probability

    def response_probability(self, perturbation, rate):
        keep = torch.tensor([t in eff_targets for t in _registry_targets]).unsqueeze(-1)  # (T, 1)
        return _orig_rp(self, perturbation, torch.where(keep, rate, torch.ones_like(rate)))

    PerturbationProgram.response_probability = response_probability
if zero_init:
    orig = M.PerturbationModel._build

    def _build(self, *a, **k):
        orig(self, *a, **k)
        with torch.no_grad():
            self.guide.effect_loc.zero_()

    M.PerturbationModel._build = _build
cpath = Path(f"/tmp/pap/cfg_{name}_s{seed}.yaml")
cpath.write_text(yaml.safe_dump(cfg))
if eff_targets is not None:
    _registry_targets = list(get_registry(cli.load_data(cli.load_config(cpath))).targets)
t0 = time.perf_counter()
run = cli.fit(cpath)
fit_s = time.perf_counter() - t0
config = cli.load_config(run / "config.yaml")
adata = cli.load_data(config)
split = pd.read_csv(run / "split.csv", index_col=0)["split"]
parts = cli._subsets(adata, split)
model = PerturbationModel.load(run, parts["train"])

labels = sorted(set(parts["test"].obs["perturbation"].astype(str)) - {"control"})
matched, _ = heldout_draws(model, labels, n_samples=n_mean, n_counts=1)
pred = pd.DataFrame(matched.mean(0).numpy(), index=labels, columns=list(model.registry.genes))
per = evaluation.ate_metrics(
    model,
    parts["test"],
    adata_train=parts["train"],
    top_k=20,
    reference="control",
    predictions=pred,
    iwelbo=False,
    per_perturbation=True,
    baselines=("training_mean", "shrunk_training_mean"),
)
per.to_csv(run / "per_label.csv", index=False)
summ = per.groupby("method")[["pearson_all", "pearson_topk", "mse_all"]].mean()
strong = per[per.strong].groupby("method")[["pearson_all", "pearson_topk"]].mean().add_prefix("strong_")
out = summ.join(strong)
print(f"== {name} seed {seed} ({' '.join(sys.argv[3:])}) epochs {len(model.history_)} fit {fit_s:.0f}s")
print(out.to_string(float_format="{:.4f}".format), flush=True)
