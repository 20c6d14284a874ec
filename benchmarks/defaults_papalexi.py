"""Papalexi held-out metrics of model settings against the training-mean baselines, over random splits.

One fit per (setting, split seed) of ``configs/papalexi.yaml`` with the model options overridden, scored on the
held-out cells (shift versus control cells; ``pertpyro.evaluation.ate_metrics``) beside the training mean and the
empirical-Bayes shrunk training mean; for the six strong knockouts also the slope of the predicted on the observed
held-out shifts over all genes (and the training mean's slope, the ceiling set by the held-out cells' noise).

Run::

    python benchmarks/defaults_papalexi.py fit --seed 0 --name default --options '{}' --records runs/defaults_papalexi
    python benchmarks/defaults_papalexi.py loglik --seed 0 --name default --records runs/defaults_papalexi
    python benchmarks/defaults_papalexi.py report --records runs/defaults_papalexi

``fit`` saves the model to ``NAME_sSEED/`` and scores it into the record ``NAME_sSEED.json`` (``score`` redoes the
scoring of a saved model, ``loglik`` adds the held-out cells' likelihood per label to its record); ``report`` writes ``benchmarks/results/defaults_papalexi.json`` from
all records.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from _results import table, write_result

from pertpyro import evaluation
from pertpyro.cli import load_config, make_split
from pertpyro.data._statistics import observed_shift
from pertpyro.model import PerturbationModel
from pertpyro.runs import load_data, subsets

STRONG = ["STAT1", "JAK2", "IFNGR1", "IFNGR2", "SMAD4", "IRF1"]
METRICS = ["pearson_all", "pearson_topk", "mse_all"]
BASELINES = ("training_mean", "shrunk_training_mean")
REFERENCE = "shipped"
"""Record name of configs/papalexi.yaml as it is (the reference of the held-out likelihood table)."""


def _slope(observed: np.ndarray, predicted: np.ndarray) -> float:
    return float(np.polyfit(observed, predicted, 1)[0])


def _corrected(predicted, test) -> dict[str, float]:
    """Slopes of the strong six corrected for the held-out noise (:func:`pertpyro.evaluation.effect_strength`)."""
    return evaluation.effect_strength(predicted, test, labels=STRONG)["corrected_slope"].to_dict()


def _mean_of(record: dict, key: str) -> float | None:
    return float(np.mean(list(record[key].values()))) if key in record else None


def _parts(seed: int, options: dict) -> tuple[dict, dict]:
    config = load_config("configs/papalexi.yaml")
    config["split"]["seed"] = seed
    config["model"].update(options)
    adata = load_data(config)
    return config, subsets(adata, make_split(adata, config))


def train_config(parts: dict, config: dict, epochs: int | None) -> tuple[PerturbationModel, float]:
    """A model with ``config["model"]`` trained on ``parts["train"]`` as ``config["train"]`` says (``epochs``, when
    given, replaces its ``max_epochs``; ``parts["val"]`` for early stopping), and the seconds it took."""
    train = dict(config["train"], progress_bar=False)
    if epochs is not None:
        train["max_epochs"] = epochs
    start = time.perf_counter()
    model = PerturbationModel(parts["train"], **config["model"])
    model.train(validation_adata=parts["val"], **train)
    return model, time.perf_counter() - start


def fit(seed: int, name: str, options: dict, records: Path, epochs: int | None) -> None:
    """Train one setting on one split and save the model to ``records/NAME_sSEED/``, then score it."""
    torch.set_num_threads(1)
    config, parts = _parts(seed, options)
    model, elapsed = train_config(parts, config, epochs)
    model.save(records / f"{name}_s{seed}", overwrite=True)
    (records / f"{name}_s{seed}" / "fit.json").write_text(json.dumps({"fit_s": elapsed, "options": options}))
    score(seed, name, records)


def heldout_scores(
    model: PerturbationModel, parts: dict, basal: str = "own", samples: int = 30
) -> tuple[dict, pd.DataFrame]:
    """Held-out metrics of a fitted model beside the baselines (all knockouts and the strong six), the strong six's
    raw slopes, and the predicted shifts of every held-out label (``model.predict_shift``, ``samples`` draws)."""
    labels = sorted(set(observed_shift(parts["test"]).index))
    predicted = model.predict_shift(labels, basal=basal, n_samples=samples)
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
    scores = {
        "epochs": len(model.history_) if model.history_ is not None else None,
        "summary": per.groupby("method")[METRICS].mean().to_dict(orient="index"),
        "strong": per[per["perturbation"].isin(STRONG)].groupby("method")[METRICS].mean().to_dict(orient="index"),
        "slope": {t: _slope(observed.loc[t].to_numpy(), predicted.loc[t].to_numpy()) for t in STRONG},
    }
    return scores, predicted


def record_path(records: Path, name: str, seed: int, basal: str) -> Path:
    """``NAME_sSEED.json``; ``NAME-control_sSEED.json`` for predictions over control cells' basal states."""
    return records / (f"{name}_s{seed}.json" if basal == "own" else f"{name}-{basal}_s{seed}.json")


def load_fit(seed: int, name: str, records: Path) -> tuple[PerturbationModel, dict, dict]:
    """The saved model of ``name`` on split ``seed``, that split's parts and the fit's ``fit.json``."""
    torch.set_num_threads(1)
    folder = records / f"{name}_s{seed}"
    fitted = json.loads((folder / "fit.json").read_text())
    _, parts = _parts(seed, fitted["options"])
    return PerturbationModel.load(folder, parts["train"]), parts, fitted


def setting_label(record: dict) -> str:
    """The model options of a record as ``key=value, ...`` (``"defaults"`` for none)."""
    return ", ".join(f"{k}={v}" for k, v in record["options"].items()) or "defaults"


def score(seed: int, name: str, records: Path, basal: str = "own", samples: int = 30) -> None:
    """Score the saved model of ``name`` on split ``seed`` (``predict_shift(basal=basal)``); writes its record."""
    model, parts, fitted = load_fit(seed, name, records)
    scores, predicted = heldout_scores(model, parts, basal, samples)
    training = observed_shift(parts["train"], labels=STRONG)
    observed = observed_shift(parts["test"], labels=STRONG)
    record = {
        "name": name,
        "seed": seed,
        "options": fitted["options"],
        "basal": basal,
        "samples": samples,
        "fit_s": fitted["fit_s"],
        **scores,
        "training_mean_slope": {t: _slope(observed.loc[t].to_numpy(), training.loc[t].to_numpy()) for t in STRONG},
        "corrected_slope": _corrected(predicted, parts["test"]),
        "training_mean_corrected_slope": _corrected(training, parts["test"]),
        "efficacy": {k: float(v) for k, v in model.efficacy_probability().round(3).items()},
    }
    record_path(records, name, seed, basal).write_text(json.dumps(record, indent=1))
    print(json.dumps(record, indent=1))


def loglik(seed: int, name: str, records: Path, samples: int = 20) -> None:
    """Add the held-out cells' mean IWELBO per label (``model.iwelbo``, nats per cell) to the record of ``name``."""
    model, parts, _ = load_fit(seed, name, records)
    test = parts["test"]
    labels = test.obs["perturbation"].astype(str)
    values = {
        label: model.iwelbo(test[(labels == label).to_numpy()], n_samples=samples) for label in sorted(set(labels))
    }
    path = record_path(records, name, seed, "own")
    record = json.loads(path.read_text())
    record["heldout_iwelbo"] = values
    path.write_text(json.dumps(record, indent=1))
    print(json.dumps(values, indent=1))


def loglik_rows(fits: list[dict]) -> list[list]:
    """Per setting and split: held-out IWELBO (nats per cell) minus the config's, over label groups."""
    reference = {f["seed"]: f["heldout_iwelbo"] for f in fits if f["name"] == REFERENCE and "heldout_iwelbo" in f}
    rows = []
    for f in sorted(fits, key=lambda f: (f["name"], f["seed"])):
        if "heldout_iwelbo" not in f or f["name"] == REFERENCE or f["seed"] not in reference:
            continue
        diff = {label: value - reference[f["seed"]][label] for label, value in f["heldout_iwelbo"].items()}
        strong = [diff[t] for t in STRONG]
        weak = [v for label, v in diff.items() if label not in STRONG and label != "control"]
        better = sum(v > diff["control"] for v in weak)
        label = setting_label(f)
        rows.append(
            [label, f["seed"], diff["control"], float(np.mean(strong)), float(np.mean(weak)), better, len(weak)]
        )
    return rows


def report(records: Path) -> None:
    fits = [json.loads(p.read_text()) for p in sorted(records.glob("*_s*.json"))]
    rows, diffs = [], []
    seeds = sorted({f["seed"] for f in fits})
    for seed in seeds:
        same = [f for f in fits if f["seed"] == seed]
        first = next((f for f in same if "training_mean_corrected_slope" in f), same[0])
        for method in BASELINES:
            s, st = first["summary"][method], first["strong"][method]
            slopes = [None, None]
            if method == "training_mean":
                slopes = [_mean_of(first, "training_mean_slope"), _mean_of(first, "training_mean_corrected_slope")]
            rows.append([method, seed, s["pearson_all"], s["pearson_topk"], s["mse_all"], st["pearson_topk"], *slopes])
    for f in sorted(fits, key=lambda f: (f["name"], f["seed"])):
        label = setting_label(f)
        if f.get("basal", "control") != "own":  # records without the key were scored over control cells
            label += " (basal=control)"
        model = next(m for m in f["summary"] if m not in BASELINES)
        s, st = f["summary"][model], f["strong"][model]
        rows.append(
            [
                label,
                f["seed"],
                s["pearson_all"],
                s["pearson_topk"],
                s["mse_all"],
                st["pearson_topk"],
                _mean_of(f, "slope"),
                _mean_of(f, "corrected_slope"),
            ]
        )
        shrunk = f["summary"]["shrunk_training_mean"]
        diffs.append(
            [
                label,
                f["seed"],
                s["pearson_all"] - shrunk["pearson_all"],
                s["pearson_topk"] - shrunk["pearson_topk"],
                shrunk["mse_all"] - s["mse_all"],
                st["pearson_topk"] - f["strong"]["training_mean"]["pearson_topk"],
            ]
        )
    write_result(
        "defaults_papalexi",
        title="Papalexi: model settings against the training-mean baselines over random splits",
        summary=(
            "The shipped Papalexi 2021 screen, random 64/16/20 cell splits (seeds in the table), "
            "configs/papalexi.yaml with the model options of each row. Held-out shifts versus control cells: Pearson "
            "over all genes and over the 20 largest observed shifts, MSE, each averaged over the 25 knockouts; top-20 "
            "Pearson over the six strong knockouts; and the slope of predicted on observed shifts over all genes, "
            "averaged over the six, raw and corrected for the held-out cells' sampling noise "
            "(pertpyro.evaluation.effect_strength; the raw slope is diluted by that noise, the corrected one is 1 for "
            "a prediction at the effect's full size, and the training mean scores 1.05 and 0.93 on it). The second "
            "table gives each fit's margins over the baselines of the same split (positive: the model is better). "
            "'defaults' is the config as it is (efficacy='strong'). Rows without a mark predict each knockout from "
            "its own training cells' basal states (model.predict_shift's default, basal='own', 100 posterior draws); "
            "rows marked basal=control predict it over the control cells' basal states (30 draws), which misses the "
            "part of a knockout's effect that the fit put in its cells' basal states. With basal='own' the config is "
            "ahead of the shrunk training mean on both splits in Pearson over all genes, over the top-20 genes and "
            "in MSE, its corrected slope on the strong six rises from 0.78 and 0.71 to 0.88 and 0.80, and its "
            "top-20 Pearson on the strong six is within 0.0013 of the training mean's, still below it on both "
            "splits. With escapers for every target (efficacy=True, or 'auto' with its learned prior on the "
            "response rates) the strong six pass the training mean on both splits (corrected slopes 0.94 and 0.81) "
            "but split 0 falls behind the shrunk mean in Pearson over all and top-20 genes, where the weak "
            "knockouts' escaper mixtures (response rates 0.18 to 0.46 for all but MYC and SPI1) fit basal heterogeneity. "
            "With the spike-and-slab effect prior on as well (sparse_effects=True) escapers for every target are ahead "
            "of the shrunk mean in all three columns on both splits and reach the training mean's top-20 Pearson on "
            "the strong six on both (efficacy=True; efficacy='auto' falls 0.0002 short on split 1), but over five "
            "splits that setting is not ahead of the config: `pertpyro fit benchmarks/configs/papalexi_sparse.yaml && "
            "pertpyro evaluate runs/papalexi_sparse` gives means 0.340 / 0.468 / 0.0325 (Pearson all / top-20 / MSE) "
            "against the config's 0.337 / 0.463 / 0.0331 (benchmarks/results/papalexi.json), a lower MSE on each of the "
            "five splits, and on split 2 it falls behind the shrunk mean in Pearson over all genes (-0.014) and the "
            "top-20 genes (-0.042), where the config is ahead on every split. Without escapers (efficacy=False) the "
            "model is ahead of the shrunk mean on both splits but below the training mean on the strong six, with "
            "corrected slopes of 0.84 and 0.75. The independence "
            "penalty and latent_effects were scored over control cells' basal states: the penalty (weight 10) is "
            "ahead of the config there on both splits in every column, and at weight 3 it keeps most of that "
            "gain, but the null pseudo-targets of benchmarks/controls_papalexi.py (split 0) then exclude 0 from "
            "their 90% intervals for 10.9% (weight 3) and 11.9% (weight 10) of their genes, against 9.0% without "
            "it; latent_effects adds no consistent gain. The third table scores the same fits by the held-out "
            "cells' likelihood (model.iwelbo, 20 importance samples, mean nats per cell of each label's test cells; "
            "`python benchmarks/defaults_papalexi.py loglik --seed S --name NAME --records runs/defaults_papalexi`), "
            "the evidence the model itself weighs, against the config on the same split: escapers for every target "
            "raise the held-out likelihood of 13 to 18 of the 19 other knockouts (16 to 18 with efficacy=True) by "
            "more than the control cells' change, by 0.085 to 0.18 nats per cell on average, and without escapers the strong six lose 1.03 nats "
            "per cell. So the likelihood, and with it any prior on the response rates learned from the data, chooses "
            "escapers for every target, where the held-out mean shifts of the weak knockouts are predicted better "
            "without them: the mixture fits structure of those knockouts' cells that is real (it holds on held-out "
            "cells) but does not move their mean."
        ),
        tables=[
            table(
                "Held-out metrics",
                [
                    "method",
                    "split seed",
                    "Pearson all",
                    "Pearson top-20",
                    "MSE",
                    "strong six top-20",
                    "strong six slope",
                    "strong six corrected slope",
                ],
                rows,
                digits=4,
            ),
            table(
                "Margins over the baselines (same split)",
                [
                    "setting",
                    "split seed",
                    "Pearson all - shrunk",
                    "top-20 - shrunk",
                    "shrunk MSE - MSE",
                    "strong six top-20 - training mean",
                ],
                diffs,
                digits=4,
            ),
            table(
                "Held-out likelihood against the config (configs/papalexi.yaml as it is), same split: mean IWELBO of "
                "the test cells minus the config's, nats per cell (positive: more likely under the setting)",
                [
                    "setting",
                    "split seed",
                    "control cells",
                    "strong six (mean)",
                    "19 other knockouts (mean)",
                    "other knockouts above the control cells' change",
                    "other knockouts",
                ],
                loglik_rows(fits),
                digits=3,
            ),
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["fit", "score", "loglik", "report"])
    parser.add_argument("--records", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="default")
    parser.add_argument("--options", default="{}", help='model options as JSON, e.g. \'{"efficacy": "strong"}\'')
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--basal", choices=["own", "control"], default="own", help="predict_shift's basal states")
    parser.add_argument("--samples", type=int, default=30, help="predict_shift's posterior draws")
    args = parser.parse_args()
    if args.mode == "fit":
        fit(args.seed, args.name, json.loads(args.options), args.records, args.epochs)
    elif args.mode == "score":
        score(args.seed, args.name, args.records, args.basal, args.samples)
    elif args.mode == "loglik":
        loglik(args.seed, args.name, args.records)
    else:
        report(args.records)


if __name__ == "__main__":
    main()
