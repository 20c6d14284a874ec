"""The schema of ``pertpyro fit`` configs (pydantic): types, ranges and known keys, checked before any work.

Every section forbids unknown keys (a typo must not pass silently) and fills missing options with their defaults.
The ``model`` and ``train`` sections mirror the keyword arguments of :class:`pertpyro.PerturbationModel` and its
``train`` method (``tests/test_config.py`` checks that they stay in step).
"""

from __future__ import annotations

import copy
import inspect
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pertpyro.data._simulate import simulate

PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
Probability = Annotated[float, Field(gt=0, lt=1)]


class ConfigError(ValueError):
    """A config file that cannot be read or does not fit the schema (the message is one line)."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class DataSection(_Section):
    dataset: Literal["papalexi2021", "simulate"] = "papalexi2021"
    path: str | None = None
    simulate: dict[str, Any] = Field(default_factory=dict)
    perturbation_key: str = "perturbation"
    control: str = "control"
    batch_key: str | None = None
    layer: str | None = None
    guide_key: str | None = None
    # Null pseudo-targets formed from non-targeting guides (pertpyro.data.add_negative_controls; random groups of
    # control cells without guide_key). Off by default: they take control cells from the fit.
    negative_controls: NonNegativeInt = 0

    @field_validator("simulate")
    @classmethod
    def _known_simulate_options(cls, value: dict[str, Any]) -> dict[str, Any]:
        known = set(inspect.signature(simulate).parameters)
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"unknown simulate options {unknown}; known: {sorted(known)}")
        return value


class QCSection(_Section):
    run: bool = False
    n_mads: Annotated[list[PositiveFloat], Field(min_length=4, max_length=4)] = [5.0, 5.0, 3.0, 3.0]
    doublets: bool | Literal["auto"] = "auto"


class SplitSection(_Section):
    kind: Literal["random", "heldout_combinations", "heldout_perturbations"] = "random"
    seed: NonNegativeInt = 0
    heldout: PositiveInt | list[str] | None = None


class ModelSection(_Section):
    latent_dim: PositiveInt = 10
    n_hidden: PositiveInt = 128
    sparse_effects: bool = False
    efficacy: bool | str | list[str] = True
    mask_prior: Probability = 0.5
    encode_perturbation: bool = True
    effect_df: PositiveFloat = 4.0
    independence: NonNegativeFloat = 0.0
    latent_effects: bool = False
    efficacy_per_guide: bool = False
    artifacts: Literal["observed", "latent"] | None = None
    artifact_key: str = "artifact"
    artifact_evidence: Literal["auto"] | list[str] | None = "auto"
    seed: NonNegativeInt = 0
    grn: bool = False
    grn_prior: str | None = None
    grn_regulators: list[str] | None = None
    grn_steps: PositiveInt = 3
    grn_density: Annotated[float, Field(gt=0, le=1)] = 0.05
    grn_prior_inclusion: Probability = 0.5
    grn_weight_scale: PositiveFloat = 1.0
    grn_init_lasso: PositiveFloat | None = None


class TrainSection(_Section):
    max_epochs: PositiveInt | None = None
    batch_size: PositiveInt = 512
    lr: PositiveFloat = 5e-3
    validation_fraction: Probability = 0.1
    accelerator: str = "auto"
    devices: PositiveInt | str = "auto"
    strategy: str = "auto"
    early_stopping: bool = True
    patience: PositiveInt = 20
    seed: NonNegativeInt = 0
    progress_bar: bool = True
    block_size: PositiveInt = 1
    sparse_targets: bool | None = None
    span_size: PositiveInt | None = None
    num_workers: NonNegativeInt | None = None


class EvaluateSection(_Section):
    n_samples: PositiveInt = 30
    top_k: PositiveInt = 20
    iwelbo_particles: PositiveInt = 10
    n_counts: PositiveInt = 1
    cell_eval: bool = False  # cell-eval's full profile on generated cells (pip install 'pertpyro[eval]')
    n_splits: PositiveInt = 5  # the run's split and n_splits - 1 refits on the splits of the next seeds
    threshold: Annotated[float, Field(ge=0)] = 0.1  # hits of the control table: P(|shift| > threshold) ...
    fdr: Probability = 0.1  # ... called at this Bayesian FDR


class CalibrateSection(_Section):
    run: bool = False  # model.calibrate() after training (one more training per replica)
    n_replicas: PositiveInt = 2
    n_samples: PositiveInt = 100


class Config(_Section):
    """A whole ``pertpyro fit`` config."""

    name: Annotated[str, Field(min_length=1)] = "run"
    output: str | None = None
    data: DataSection = Field(default_factory=DataSection)
    qc: QCSection = Field(default_factory=QCSection)  # pertpyro.pp.qc before fitting
    split: SplitSection = Field(default_factory=SplitSection)
    model: ModelSection = Field(default_factory=ModelSection)  # PerturbationModel's keyword arguments
    train: TrainSection = Field(default_factory=TrainSection)  # PerturbationModel.train's keyword arguments
    evaluate: EvaluateSection = Field(default_factory=EvaluateSection)
    calibrate: CalibrateSection = Field(default_factory=CalibrateSection)


def _describe(err: ValidationError, source: str) -> str:
    """The first problem of ``err`` as one line (and how many more there are)."""
    problems = err.errors()
    first = problems[0]
    where = ".".join(str(part) for part in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        text = f"Unknown config key '{where}'"
    else:
        text = f"{where}: {first['msg']}"
        if "input" in first and not isinstance(first["input"], dict):
            text += f" (got {first['input']!r})"
    more = f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})" if len(problems) > 1 else ""
    return f"{source}: {text}{more}".replace("\n", " ")


def validate_config(raw: Any, source: str = "config") -> dict[str, Any]:
    """Check ``raw`` (parsed YAML) against the schema; the config with every default filled, as plain dicts.

    Raises
    ------
    ConfigError
        With a one-line message naming the first bad key.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a config is a mapping of sections (name, data, model, train, ...).")
    try:
        config = Config.model_validate(copy.deepcopy(raw)).model_dump()
    except ValidationError as err:
        raise ConfigError(_describe(err, source)) from err
    if config["output"] is None:
        config["output"] = str(Path("runs") / config["name"])
    return config


def read_config(path: str | Path) -> dict[str, Any]:
    """Read and validate the YAML config at ``path`` (see :func:`validate_config`).

    Raises
    ------
    FileNotFoundError
        Nothing at ``path``.
    ConfigError
        ``path`` is a folder, not YAML, or does not fit the schema.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No config file at {path}.")
    if path.is_dir():
        raise ConfigError(f"{path} is a folder; give the config's YAML file.")
    try:
        raw = yaml.safe_load(path.read_text())
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a text file.") from err
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}: YAML syntax error{where}: {problem}") from err
    return validate_config(raw, str(path))
