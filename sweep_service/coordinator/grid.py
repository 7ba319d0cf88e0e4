"""Grid expansion: a config becomes baseline and pruned TrialSpecs with stable keys, and
the sweep gets an id from what defines all of its trials."""
from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any, Iterator

from sweep_service.spec import BASELINE, PRUNED, TrialSpec

if TYPE_CHECKING:
    from sweep_service.coordinator.config import SweepConfig

# The identity fields a grid varies: a sweep holds any values of them (widening the grid
# adds trials to the same sweep); every other identity field is the same for all its
# trials of a kind, and defines the sweep.
AXES = frozenset({"model", "pruner", "rate", "seed", "baseline_key"})


def _common(config: SweepConfig) -> dict[str, Any]:
    return dict(
        dataset=config.dataset,
        weights=config.weights,
        image_size=config.image_size,
        batch_size=config.batch_size,
        eval_batch_size=config.eval_batch_size,
        optimizer=config.optimizer.model_dump(),
        augment=config.augment,
        train_subset=config.train_subset,
        test_subset=config.test_subset,
        calibration_batches=config.calibration_batches,
        layers=config.layers.model_dump(),
        grouping=config.grouping,
        allocation=config.allocation,
        prune_from=config.prune_from,
        compute=config.compute,
        data_root=str(config.data_root),
        weights_dir=str(config.weights_dir),
        cpus=config.resources.cpus,
        gpus=config.resources.gpus,
        quantize=tuple(config.quantize),
    )


def baseline_spec(config: SweepConfig, model: str, seed: int) -> TrialSpec:
    return TrialSpec(kind=BASELINE, model=model, pruner="none", rate=0.0, seed=seed,
                     epochs=config.baseline_epochs, baseline_key=None, **_common(config))


def expand(config: SweepConfig) -> Iterator[TrialSpec]:
    """Per model and seed: the baseline, then pruner x rate, in config order. A pruned
    trial starts from the baseline of its own seed, so that two pruners of one seed share
    a baseline and their difference is a paired one."""
    for model in config.models:
        for seed in config.run_seeds:
            baseline = baseline_spec(config, model, seed)
            yield baseline
            for pruner in config.pruners:
                for rate in config.rates:
                    yield TrialSpec(kind=PRUNED, model=model, pruner=pruner, rate=rate, seed=seed,
                                    epochs=config.finetune_epochs, baseline_key=baseline.key,
                                    round_to=config.round_to, **_common(config))


def sweep_id(config: SweepConfig) -> str:
    """The config's name plus a hash of what defines its trials besides the grid's axes:
    re-running a config resumes its sweep and widening the grid adds trials to it, while
    changing e.g. the epochs starts a new sweep."""
    defining: dict[str, dict[str, Any]] = {}
    for spec in expand(config):
        fields = {k: v for k, v in spec.identity().items() if k not in AXES}
        defining.setdefault(spec.kind, fields)
    digest = hashlib.sha1(json.dumps(defining, sort_keys=True).encode()).hexdigest()[:8]
    return f"{config.name}-{digest}"
