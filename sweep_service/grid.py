"""Grid expansion: a config becomes baseline and pruned TrialSpecs with stable keys.

A trial's key is a hash of the fields that determine its result (not paths or
resources), so the same trial gets the same key in every run of a config.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:  # workers import this module; they need neither pydantic nor the config
    from sweep_service.config import SweepConfig

# A trial's kind and the states it goes through, as the store records them. Defined here,
# beside TrialSpec, so that workers can name them without importing the store (SQLAlchemy).
BASELINE, PRUNED = "baseline", "pruned"
PENDING, RUNNING, COMPLETED, FAILED = "pending", "running", "completed", "failed"
STATUSES = (PENDING, RUNNING, COMPLETED, FAILED)

# Fields that say where things are or how the hardware runs them: not part of the key.
_NOT_IN_KEY = frozenset({"data_root", "weights_dir", "cpus", "gpus", "compute", "latency_runs"})


@dataclass(frozen=True)
class TrialSpec:
    kind: str  # BASELINE or PRUNED
    model: str
    pruner: str  # "none" for baselines
    rate: float
    dataset: str
    weights: str
    image_size: int
    epochs: int
    batch_size: int
    eval_batch_size: int
    optimizer: dict[str, Any]
    augment: bool
    seed: int
    train_subset: int | None
    test_subset: int | None
    calibration_batches: int
    layers: dict[str, Any]
    prune_from: str
    baseline_key: str | None
    data_root: str
    weights_dir: str
    cpus: float
    gpus: float
    latency_runs: int
    compute: str = "auto"  # "auto" or a sweep_service.compute choice

    @property
    def key(self) -> str:
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k not in _NOT_IN_KEY}
        return hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def label(self) -> str:
        if self.kind == BASELINE:
            return f"{self.model} baseline"
        return f"{self.model} {self.pruner} {self.rate:.0%}"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TrialSpec":
        return cls(**json.loads(text))


def _common(config: SweepConfig) -> dict[str, Any]:
    return dict(
        dataset=config.dataset,
        weights=config.weights,
        image_size=config.image_size,
        batch_size=config.batch_size,
        eval_batch_size=config.eval_batch_size,
        optimizer=config.optimizer.model_dump(),
        augment=config.augment,
        seed=config.seed,
        train_subset=config.train_subset,
        test_subset=config.test_subset,
        calibration_batches=config.calibration_batches,
        layers=config.layers.model_dump(),
        prune_from=config.prune_from,
        data_root=str(config.data_root),
        weights_dir=str(config.weights_dir),
        cpus=config.resources.cpus,
        gpus=config.resources.gpus,
        latency_runs=config.latency_runs,
        compute=config.compute,
    )


def baseline_spec(config: SweepConfig, model: str) -> TrialSpec:
    return TrialSpec(kind=BASELINE, model=model, pruner="none", rate=0.0,
                     epochs=config.baseline_epochs, baseline_key=None, **_common(config))


def expand(config: SweepConfig) -> Iterator[TrialSpec]:
    """Baseline of each model first, then model x pruner x rate, in config order."""
    for model in config.models:
        baseline = baseline_spec(config, model)
        yield baseline
        for pruner in config.pruners:
            for rate in config.rates:
                yield TrialSpec(kind=PRUNED, model=model, pruner=pruner, rate=rate,
                                epochs=config.finetune_epochs, baseline_key=baseline.key,
                                **_common(config))
