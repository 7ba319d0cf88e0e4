"""Sweep configuration: one YAML file, validated before anything runs.

Relative paths are resolved against the working directory at load time, so trials
receive absolute paths. Command-line overrides are applied before validation, and the
final config is what gets stored with the results.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

DATASETS = ("cifar10", "synthetic")
WEIGHTS = ("imagenet", "none")
PRUNE_FROM = ("baseline", "pretrained")


class ConfigError(ValueError):
    """The config is invalid; the message names each bad field and what is allowed."""


class _Strict(BaseModel):
    # .inf and .nan are YAML floats: no field means them
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class OptimizerConfig(_Strict):
    name: Literal["sgd", "adamw"] = "sgd"
    lr: PositiveFloat = 0.01
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: NonNegativeFloat = 5e-4


class LayerSelection(_Strict):
    """Which layers a pruner may touch. Pruning studies leave the stem conv and the
    classifier alone by default: the stem has few channels and the classifier's
    outputs are the classes."""

    types: list[Literal["Conv2d", "Linear"]] = Field(default_factory=lambda: ["Conv2d"], min_length=1)
    include_first_conv: bool = False
    include_classifier: bool = False
    exclude: list[str] = Field(default_factory=list)


class Resources(_Strict):
    cpus: PositiveFloat = 1.0
    gpus: NonNegativeFloat = 0.0


class Constraints(_Strict):
    """Limits for `recommend` and the report's recommendation."""

    max_params: PositiveInt | None = None
    max_macs: PositiveInt | None = None
    max_latency_ms: PositiveFloat | None = None
    max_size_mb: PositiveFloat | None = None
    min_accuracy: float | None = Field(None, ge=0.0, le=1.0)


RESOURCE_NAME = r"^[A-Za-z_][A-Za-z0-9_.-]*$"


class MeasureSettings(_Strict):
    """The measurement stage (sweep_service.coordinator.measurement): how every variant's
    latency and peak memory are measured, and on which node."""

    threads: PositiveInt = 1
    batch_sizes: list[PositiveInt] = Field(default_factory=lambda: [1], min_length=1)
    warmup: NonNegativeInt = 10  # untimed calls per model before the first round
    rounds: PositiveInt = 10  # the models take turns, round after round
    runs: PositiveInt = 20  # timed calls per model in each round
    # A Ray custom resource: measure on a node started with `--resources '{"<on>": 1}'`.
    # None: on the node of the cluster with the most CPUs, once its trials are done.
    on: str | None = None

    @field_validator("on")
    @classmethod
    def _resource_name(cls, on: str | None) -> str | None:
        if on is not None and not re.fullmatch(RESOURCE_NAME, on):
            raise ValueError(f"{on!r} is not a Ray resource name (letters, digits, '_', '.', '-'), e.g. edge")
        return on

    @field_validator("batch_sizes")
    @classmethod
    def _distinct_batch_sizes(cls, sizes: list[int]) -> list[int]:
        if len(set(sizes)) != len(sizes):
            raise ValueError(f"batch_sizes repeat a value: {sizes}")
        return sorted(sizes)


class AdaptiveSettings(_Strict):
    """How `search: adaptive` decides what to run (see docs/search.md).

    A line (a model and pruner's rates, low to high) stops at the first rate whose accuracy is
    below the floor: `min_accuracy`, or `max_drop` below the model's baseline (both: the
    higher); with neither, when accuracy is within noise of chance. Every pruned trial first
    fine-tunes to the `rungs` (fractions of its steps, increasing) and continues past each
    only while it could still reach the Pareto front of accuracy against `front`."""

    min_accuracy: float | None = Field(None, ge=0.0, le=1.0)
    max_drop: float | None = Field(None, gt=0.0, le=1.0)
    rungs: list[float] = Field(default_factory=lambda: [0.25])
    front: Literal["params", "macs"] = "params"
    refine: bool = False

    @field_validator("rungs")
    @classmethod
    def _rungs_increase_inside_the_budget(cls, rungs: list[float]) -> list[float]:
        if any(not 0.0 < r < 1.0 for r in rungs) or rungs != sorted(set(rungs)):
            raise ValueError(f"rungs must be increasing fractions strictly between 0 and 1 (the full fine-tune "
                             f"is always the last rung), got {rungs}; e.g. [0.25], or [] for no early stopping")
        return rungs


MAX_RATES = 1000  # more rates than any chart or person can tell apart


class RateRange(_Strict):
    start: float
    stop: float
    step: PositiveFloat

    @model_validator(mode="after")
    def _reasonable(self) -> "RateRange":
        if self.stop < self.start:
            raise ValueError(f"stop {self.stop} is below start {self.start}")
        if (self.stop - self.start) / self.step >= MAX_RATES:
            raise ValueError(f"start {self.start} to stop {self.stop} in steps of {self.step} makes more than "
                             f"{MAX_RATES} rates; use a larger step")
        return self

    def values(self) -> list[float]:
        n = int(round((self.stop - self.start) / self.step))
        return [round(self.start + i * self.step, 6) for i in range(n + 1)]


class SweepConfig(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    models: list[str] = Field(min_length=1)
    pruners: list[str] = Field(min_length=1)
    rates: list[float] = Field(min_length=1, max_length=MAX_RATES)
    dataset: Literal["cifar10", "synthetic"]
    data_root: Path = Path("data")
    weights: Literal["imagenet", "none"] = "imagenet"
    weights_dir: Path = Path("weights")
    image_size: int = Field(32, ge=16, le=512)
    baseline_epochs: NonNegativeInt = 3
    finetune_epochs: NonNegativeInt = 1
    batch_size: int = 128
    eval_batch_size: PositiveInt = 512
    optimizer: OptimizerConfig = OptimizerConfig()
    augment: bool = True
    # Repeats: `seed` alone runs one seed; `seeds` lists the seeds to run; `repeats: N` runs
    # seed, seed+1, ..., seed+N-1. Each seed is a trial of every (model, pruner, rate) with its
    # own baseline, so that the report can give each configuration a mean and an interval.
    seed: int = Field(0, ge=0, lt=2**32)  # what every random generator of a trial accepts
    seeds: list[int] | None = Field(None, min_length=1)
    repeats: PositiveInt | None = None
    train_subset: PositiveInt | None = None
    test_subset: PositiveInt | None = None
    calibration_batches: PositiveInt = 4
    layers: LayerSelection = LayerSelection()
    # How a plugin's choice becomes what speedup removes (docs/pruning.md). dependency: layers
    # whose channels are coupled (residual additions, depthwise convs...) are pruned as one
    # group with one choice of channels. layer: each layer's own masks, as NNI's pruners give
    # them; speedup then keeps every channel that one layer of a coupled set keeps (the
    # reference study's behaviour).
    grouping: Literal["dependency", "layer"] = "dependency"
    # uniform: each group loses the rate of its channels. global: channels are ranked across
    # groups by their plugin's scores, so some groups lose more than others.
    allocation: Literal["uniform", "global"] = "uniform"
    # With grouping: dependency, each group keeps a multiple of this many channels (8 suits
    # CPU runtimes; docs/edge.md); 1 keeps what the rate gives.
    round_to: PositiveInt = 1
    prune_from: Literal["baseline", "pretrained"] = "baseline"
    resources: Resources = Resources()
    # Number format and memory layout of training (see sweep_service.worker.compute): fixed,
    # or "auto": each model's candidates are measured once and all its trials use the fastest.
    compute: str = "fp32"
    max_retries: NonNegativeInt = 2
    # Besides fp32 (the exported model every variant is made from), which post-training
    # variants each trial makes: fp16, int8 (ONNX Runtime static quantization).
    quantize: list[Literal["fp32", "fp16", "int8"]] = Field(default_factory=lambda: ["fp32"], min_length=1)
    measure: MeasureSettings = MeasureSettings()
    # A trial running longer is cancelled and recorded as failed (a plugin that never
    # returns, a hung device); raise it for long trials on slow machines.
    trial_timeout_s: PositiveFloat = 6 * 3600.0
    # How long a sweep on a joined cluster (RAY_ADDRESS) waits for a node that can hold a
    # trial (`resources`) before it gives up; a local cluster cannot grow, and fails at once.
    node_wait_s: NonNegativeFloat = 600.0
    database: Path = Path("results/sweep.db")
    output_dir: Path = Path("results")
    constraints: Constraints | None = None
    # `grid` runs every trial in full; `adaptive` only what can reach the Pareto front.
    search: Literal["grid", "adaptive"] = "grid"
    adaptive: AdaptiveSettings = AdaptiveSettings()

    @field_validator("rates", mode="before")
    @classmethod
    def _expand_rate_range(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return RateRange(**value).values()
        return value

    @field_validator("rates")
    @classmethod
    def _rates_in_unit_interval(cls, rates: list[float]) -> list[float]:
        bad = [r for r in rates if not 0.0 < r < 1.0]
        if bad:
            raise ValueError(f"pruning rates must be fractions strictly between 0 and 1, got {bad}")
        if len(set(rates)) != len(rates):
            raise ValueError(f"rates repeat a value: {rates}")
        return sorted(rates)

    @model_validator(mode="before")
    @classmethod
    def _replaced_fields(cls, data: Any) -> Any:
        if isinstance(data, dict) and "latency_runs" in data:
            raise ValueError("latency_runs: latency is measured by the measurement stage now; "
                             "set measure.runs (timed calls per round) instead")
        return data

    @field_validator("quantize")
    @classmethod
    def _quantize_from_fp32(cls, formats: list[str]) -> list[str]:
        if "fp32" not in formats:
            raise ValueError(f"must include fp32, the exported model every other variant is made from "
                             f"and compared with; got {formats}")
        if len(set(formats)) != len(formats):
            raise ValueError(f"formats repeat: {formats}")
        from sweep_service.worker.runtime import FORMATS

        return [f for f in FORMATS if f in formats]

    @field_validator("batch_size", "train_subset")
    @classmethod
    def _two_images_at_least(cls, value: int | None) -> int | None:
        if value is not None and value < 2:
            raise ValueError(f"must be at least 2, got {value}: batch norm cannot train on a single image")
        return value

    @field_validator("models")
    @classmethod
    def _known_models(cls, models: list[str]) -> list[str]:
        from model_zoo import list_models

        unknown = [m for m in models if m not in list_models()]
        if unknown:
            raise ValueError(f"unknown model(s) {unknown}; known models: {', '.join(list_models())}")
        if len(set(models)) != len(models):
            raise ValueError(f"models repeat a name: {models}")
        return models

    @field_validator("pruners")
    @classmethod
    def _known_pruners(cls, pruners: list[str]) -> list[str]:
        from sweep_service.plugins import PluginError, load_plugins

        try:
            plugins = load_plugins()
        except PluginError as exc:
            raise ValueError(str(exc)) from None
        unknown = [p for p in pruners if p not in plugins]
        if unknown:
            raise ValueError(plugins.unknown(unknown) + " (see `python -m sweep_service plugins list`)")
        if len(set(pruners)) != len(pruners):
            raise ValueError(f"pruners repeat a name: {pruners}")
        return pruners

    @field_validator("allocation")
    @classmethod
    def _global_needs_scores(cls, allocation: str, info: ValidationInfo) -> str:
        if allocation != "global":
            return allocation
        if info.data.get("grouping") == "layer":
            raise ValueError("allocation: global ranks channel groups, but grouping: layer prunes each layer "
                             "at the rate; use grouping: dependency or allocation: uniform")
        from sweep_service.plugins import ScoringPlugin, load_plugins

        plugins = load_plugins()
        masks_only = [p for p in info.data.get("pruners") or [] if not issubclass(plugins[p].cls, ScoringPlugin)]
        if masks_only:
            raise ValueError(f"allocation: global ranks filter scores across groups, but pruner(s) "
                             f"{', '.join(masks_only)} return only masks; use allocation: uniform or pruners "
                             "that return scores (GIVES in `python -m sweep_service plugins list`)")
        return allocation

    @field_validator("round_to")
    @classmethod
    def _round_to_needs_channel_groups(cls, round_to: int, info: ValidationInfo) -> int:
        if round_to == 1:
            return round_to
        if info.data.get("grouping") == "layer":
            raise ValueError("round_to rounds the channels each group keeps, but grouping: layer keeps what NNI's "
                             "per-layer masks leave; use grouping: dependency or drop round_to")
        from sweep_service.plugins import UNSTRUCTURED, load_plugins

        plugins = load_plugins()
        weights_only = [p for p in info.data.get("pruners") or [] if plugins[p].cls.structure == UNSTRUCTURED]
        if weights_only:
            raise ValueError(f"round_to rounds the channels each group keeps, but pruner(s) {', '.join(weights_only)} "
                             "zero single weights and remove no channel; run them in a sweep without round_to")
        return round_to

    @field_validator("compute")
    @classmethod
    def _known_compute(cls, value: str) -> str:
        from sweep_service.worker.compute import CHOICES

        if value != "auto" and value not in CHOICES:
            raise ValueError(f"unknown compute {value!r}; choose auto or one of {', '.join(CHOICES)}")
        return value

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int] | None) -> list[int] | None:
        if seeds is not None and len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds repeat a value: {seeds}")
        return seeds

    @model_validator(mode="after")
    def _one_way_to_give_seeds(self) -> "SweepConfig":
        if self.seeds is not None and self.repeats is not None:
            raise ValueError("both `seeds` and `repeats` are set: give `seeds` (a list) or `repeats` "
                             "(runs seed, seed+1, ...), not both")
        if self.seeds is not None and "seed" in self.model_fields_set:
            raise ValueError("both `seed` and `seeds` are set: give `seed` (one run, or the first of "
                             "`repeats`) or `seeds` (a list), not both")
        return self

    @property
    def run_seeds(self) -> list[int]:
        """The seeds each (model, pruner, rate) runs with, in order."""
        if self.seeds is not None:
            return list(self.seeds)
        return [self.seed + i for i in range(self.repeats or 1)]

    @model_validator(mode="after")
    def _fp16_needs_gpus(self) -> "SweepConfig":
        if self.compute.startswith("fp16") and self.resources.gpus == 0:
            raise ValueError(f"compute {self.compute} runs only on GPUs but resources.gpus is 0; "
                             "set resources.gpus or use compute: auto, bf16 or fp32")
        return self

    @model_validator(mode="after")
    def _adaptive_settings_need_adaptive_search(self) -> "SweepConfig":
        if "adaptive" in self.model_fields_set and self.search != "adaptive":
            raise ValueError("`adaptive` settings are given but `search` is grid, which ignores them; "
                             "set `search: adaptive` or remove `adaptive`")
        return self

    @model_validator(mode="after")
    def _input_size_fits_models(self) -> "SweepConfig":
        from model_zoo import model_info

        too_small = [m for m in self.models if self.image_size < model_info(m).min_input_size]
        if too_small:
            need = max(model_info(m).min_input_size for m in too_small)
            raise ValueError(
                f"image_size {self.image_size} is too small for {too_small}: they need at least "
                f"{need} px; raise image_size or drop those models"
            )
        return self

    def resolved(self) -> "SweepConfig":
        """Copy with every path made absolute (trials must not depend on a cwd)."""
        return self.model_copy(
            update={
                field: getattr(self, field).expanduser().resolve()
                for field in ("data_root", "weights_dir", "database", "output_dir")
            }
        )

    def sweep_id(self) -> str:
        from sweep_service.coordinator.grid import sweep_id

        return sweep_id(self)

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)


def _format_errors(source: str, error: ValidationError) -> str:
    lines = [f"invalid config {source}:"]
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = f"unknown field; allowed fields: {', '.join(_allowed_fields(item['loc']))}"
        elif item["type"] == "missing":
            message = "required field is missing"
        lines.append(f"  - {where}: {message}")
    return "\n".join(lines)


def _allowed_fields(loc: tuple) -> list[str]:
    model: type[BaseModel] = SweepConfig
    for part in loc[:-1]:
        annotation = model.model_fields[part].annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        model = next(c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel))
    return sorted(model.model_fields)


def parse_config(data: Any, *, source: str = "<config>", overrides: dict[str, Any] | None = None) -> SweepConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"invalid config {source}: expected a mapping of fields, got {type(data).__name__}")
    data = {**data, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    try:
        return SweepConfig(**data).resolved()
    except ValidationError as exc:
        raise ConfigError(_format_errors(source, exc)) from None


class _Loader(yaml.SafeLoader):
    """YAML with YAML 1.2's booleans (true/false only). PyYAML follows YAML 1.1, which also
    reads on/off/yes/no as booleans: `measure: {on: edge}` would lose its key `on`."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))


def read_config_file(path: str | Path) -> Any:
    """The YAML document of a config file (not yet validated: see parse_config)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist" if not path.exists()
                          else f"config file {path} is not a file")
    try:
        data = yaml.load(path.read_bytes().decode("utf-8"), Loader=_Loader)
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
                          f"{exc.start}); save it as UTF-8") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if data is None:
        raise ConfigError(f"config file {path} is empty")
    if isinstance(data, dict):
        data.setdefault("name", path.stem)
    return data


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> SweepConfig:
    """Read and validate a YAML sweep config; `overrides` (e.g. from the CLI) win."""
    return parse_config(read_config_file(path), source=str(path), overrides=overrides)
