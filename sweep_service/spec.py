"""A trial's spec and its identity: what the coordinator and the workers share.

`TrialSpec` is one source of truth for what identifies a trial. Each field is declared
either with `identity()` (it determines the trial's result, so it is part of the trial's
key) or with `setting()` (where things are, or how the hardware runs them: a trial moved to
another folder or run with more CPUs is the same trial). The key is a hash of the identity
fields as sorted JSON, with KEY_VERSION: a re-run finds its finished trials by key, and a
change to what identifies a trial is made deliberately, by changing KEY_VERSION (the
known keys are pinned by tests/test_grid.py). An identity field added since is declared
with `added_identity(default)`: it enters the key only when it differs from its default,
which is what trials recorded before it existed did, so their keys stay as they were.

This module imports nothing heavy: workers and the report use it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from sweep_service.report import fmt

# Bumped when the meaning of identical identity fields changes, e.g. how a rate is applied.
# 3: channels are chosen per group of coupled layers (`grouping`, `allocation`).
KEY_VERSION = 3

# A trial's kind and the states it goes through, as the store records them. SKIPPED: not run
# because an adaptive search stopped its line (sweep_service.coordinator.search).
BASELINE, PRUNED = "baseline", "pruned"
PENDING, RUNNING, COMPLETED, FAILED, SKIPPED = "pending", "running", "completed", "failed", "skipped"
STATUSES = (PENDING, RUNNING, COMPLETED, FAILED, SKIPPED)


def identity(**kwargs) -> Any:
    """A field that determines the trial's result: part of its key."""
    return field(metadata={"identity": True}, **kwargs)


def added_identity(default: Any) -> Any:
    """An identity field added after KEY_VERSION 3: part of the key only when it is not
    `default`."""
    return field(default=default, metadata={"identity": True, "keyed_from": default})


def setting(**kwargs) -> Any:
    """A field that says where things are or how the hardware runs the trial: not part of
    its key."""
    return field(metadata={"identity": False}, **kwargs)


@dataclass(frozen=True)
class TrialSpec:
    kind: str = identity()  # BASELINE or PRUNED
    model: str = identity()
    pruner: str = identity()  # "none" for baselines
    rate: float = identity()
    dataset: str = identity()
    weights: str = identity()
    image_size: int = identity()
    epochs: int = identity()
    batch_size: int = identity()
    eval_batch_size: int = identity()
    optimizer: dict[str, Any] = identity()
    augment: bool = identity()
    seed: int = identity()
    train_subset: int | None = identity()
    test_subset: int | None = identity()
    calibration_batches: int = identity()
    layers: dict[str, Any] = identity()
    prune_from: str = identity()
    baseline_key: str | None = identity()
    # The config's `compute`: "auto" (the sweep measures each model's fastest format once)
    # or a fixed sweep_service.worker.compute choice.
    compute: str = identity(default="fp32")
    # How the plugin's choice becomes what speedup removes (coordinator.config.SweepConfig).
    # The defaults are what specs recorded before these fields existed did: per-layer masks.
    grouping: str = identity(default="layer")
    allocation: str = identity(default="uniform")
    # Pruned trials of channel pruners: each group keeps a multiple of this many channels
    # (sweep_service.worker.groups.rounded_removal); 1 keeps what the rate gives.
    round_to: int = added_identity(1)
    data_root: str = setting(default="")
    weights_dir: str = setting(default="")
    cpus: float = setting(default=1.0)
    gpus: float = setting(default=0.0)
    # The post-training variants the trial makes of its model (sweep_service.worker.variants).
    # Not identity: they do not change the trained model, and a sweep that later asks for
    # more makes the missing ones from the saved models without retraining.
    quantize: tuple[str, ...] = setting(default=("fp32",))

    def identity(self) -> dict[str, Any]:
        """The identity fields, without an added one (`added_identity`) at its default."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata["identity"]
                and ("keyed_from" not in f.metadata or getattr(self, f.name) != f.metadata["keyed_from"])}

    @property
    def key(self) -> str:
        payload = {"key_version": KEY_VERSION, **self.identity()}
        return hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def label(self) -> str:
        if self.kind == BASELINE:
            return f"{self.model} baseline"
        return f"{self.model} {self.pruner} {fmt.rate(self.rate)}"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TrialSpec":
        """The spec a row recorded. Fields this version does not know are ignored, and
        fields added since the row was written take their defaults."""
        known = {f.name for f in dataclasses.fields(cls)}
        fields = {k: v for k, v in json.loads(text).items() if k in known}
        if "quantize" in fields:
            fields["quantize"] = tuple(fields["quantize"])
        return cls(**fields)
