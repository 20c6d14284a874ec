"""Papalexi: per-guide response rates (``efficacy_per_guide``) on and off, on every held-out metric.

One fit per (setting, split seed) of ``configs/papalexi.yaml`` (guide column ``guide``), scored on the held-out cells
as in ``benchmarks/defaults_papalexi.py`` (shift versus control cells beside the training mean and the shrunk
training mean; the strong six's top-20 Pearson and slope) plus the held-out IWELBO; the per-guide fits also report
every guide's response rate.

Run::

    python benchmarks/guide_efficacy_papalexi.py fit --seed 0 --per-guide 1 --records /tmp/guides
    python benchmarks/guide_efficacy_papalexi.py fit --seed 0 --per-guide 0 --records /tmp/guides
    python benchmarks/guide_efficacy_papalexi.py report --records /tmp/guides

``fit`` trains, saves the model to ``NAME_sSEED/`` and writes the record ``NAME_sSEED.json`` (``NAME``: ``per_guide``
or ``per_target``); ``report`` writes ``benchmarks/results/guide_efficacy_papalexi.json`` from all records.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from _results import table, write_result
from defaults_papalexi import BASELINES, METRICS, STRONG, _parts, _slope

from pertpyro import evaluation
from pertpyro.data._statistics import observed_shift
from pertpyro.model import PerturbationModel

NAMES = {True: "per_guide", False: "per_target"}
IWELBO_SAMPLES = 10


def fit(seed: int, per_guide: bool, records: Path) -> None:
    """Train one setting on split ``seed``, save it and write its record."""
    torch.set_num_threads(1)
    options = {"efficacy_per_guide": per_guide}
    config, parts = _parts(seed, options)
    name = NAMES[per_guide]
    start = time.perf_counter()
    model = PerturbationModel(parts["train"], **config["model"])
    model.train(validation_adata=parts["val"], **dict(config["train"], progress_bar=False))
    elapsed = time.perf_counter() - start
    model.save(records / f"{name}_s{seed}", overwrite=True)
    labels = sorted(set(observed_shift(parts["test"]).index))
    predicted = model.predict_shift(labels)
    per = evaluation.ate_metrics(
        model,
        parts["test"],
        adata_train=parts["train"],
        per_perturbation=True,
        iwelbo=False,
        strong=STRONG,
        baselines=BASELINES,
        predictions=predicted,
    )
    per = per[per["reference"] == "control"]
    observed = observed_shift(parts["test"], labels=STRONG)
    record = {
        "name": name,
        "seed": seed,
        "options": options,
        "fit_s": elapsed,
        "epochs": len(model.history_) if model.history_ is not None else None,
        "summary": per.groupby("method")[METRICS].mean().to_dict(orient="index"),
        "strong": per[per["perturbation"].isin(STRONG)].groupby("method")[METRICS].mean().to_dict(orient="index"),
        "slope": {t: _slope(observed.loc[t].to_numpy(), predicted.loc[t].to_numpy()) for t in STRONG},
        "iwelbo": model.iwelbo(parts["test"], n_samples=IWELBO_SAMPLES),
        "efficacy": {k: float(v) for k, v in model.efficacy_probability().round(4).items()},
    }
    if per_guide:
        guides = model.efficacy_probability(per="guide")
        record["guides"] = guides.reset_index().to_dict(orient="records")
        record["guide_spread"] = float(model.program.guide_rates.spread().detach())
    (records / f"{name}_s{seed}.json").write_text(json.dumps(record, indent=1))
    print(json.dumps({k: v for k, v in record.items() if k != "guides"}, indent=1))


def report(records: Path) -> None:
    """Write the result file from the records of both settings on every split seed."""
    fits = {(f["name"], f["seed"]): f for f in (json.loads(p.read_text()) for p in sorted(records.glob("*_s*.json")))}
    seeds = sorted({seed for _, seed in fits})
    rows, diffs = [], []
    for seed in seeds:
        on, off = fits[("per_guide", seed)], fits[("per_target", seed)]
        for f in (on, off):
            model = next(m for m in f["summary"] if m not in BASELINES)
            s, st = f["summary"][model], f["strong"][model]
            rows.append(
                [f["name"], seed, s["pearson_all"], s["pearson_topk"], s["mse_all"], st["pearson_topk"],
                 float(np.mean(list(f["slope"].values()))), f["iwelbo"], f["fit_s"]]
            )  # fmt: skip
        model_on = next(m for m in on["summary"] if m not in BASELINES)
        model_off = next(m for m in off["summary"] if m not in BASELINES)
        a, b = on["summary"][model_on], off["summary"][model_off]
        sa, sb = on["strong"][model_on], off["strong"][model_off]
        diffs.append(
            [seed, a["pearson_all"] - b["pearson_all"], a["pearson_topk"] - b["pearson_topk"],
             b["mse_all"] - a["mse_all"], sa["pearson_topk"] - sb["pearson_topk"], on["iwelbo"] - off["iwelbo"]]
        )  # fmt: skip
    guide_rows = []
    for seed in seeds:
        for g in fits[("per_guide", seed)]["guides"]:
            guide_rows.append([seed, g["guide"], g["perturbation"], g["n_cells"], g["median"], g["lower"], g["upper"]])
    write_result(
        "guide_efficacy_papalexi",
        title="Papalexi: per-guide response rates on and off",
        summary=SUMMARY,
        tables=[
            table(
                "Held-out metrics (the model's rows; baselines as in defaults_papalexi)",
                [
                    "setting",
                    "split seed",
                    "Pearson all",
                    "Pearson top-20",
                    "MSE",
                    "strong six top-20",
                    "strong six slope",
                    "IWELBO (nats/cell)",
                    "fit (s)",
                ],
                rows,
                digits=4,
            ),  # fmt: skip
            table(
                "Per-guide minus per-target on the same split (positive: per-guide better)",
                ["split seed", "Pearson all", "Pearson top-20", "MSE (off - on)", "strong six top-20", "IWELBO"],
                diffs,
                digits=4,
            ),
            table(
                "Per-guide response rates (posterior median and 90% interval; guides of the knockouts without "
                "escapers in the config respond in every cell)",
                ["split seed", "guide", "target", "training cells", "median", "lower", "upper"],
                guide_rows,
                digits=3,
            ),
        ],
    )


SUMMARY = "Filled in from the measured records."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["fit", "report"])
    parser.add_argument("--records", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-guide", type=int, choices=[0, 1], default=1)
    args = parser.parse_args()
    if args.mode == "fit":
        args.records.mkdir(parents=True, exist_ok=True)
        fit(args.seed, bool(args.per_guide), args.records)
    else:
        report(args.records)


if __name__ == "__main__":
    main()
