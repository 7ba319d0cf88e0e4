"""One trial, as run on a Ray worker: a TrialSpec in, a result dict out.

A baseline trial fine-tunes the pretrained model with a new 10-class head. A pruned
trial starts from the baseline's checkpoint (or the pretrained weights), asks its
plugin for masks, removes the masked channels with NNI's ModelSpeedup, fine-tunes,
evaluates and measures. Failures come back as results with the error text, never as
exceptions, so one bad trial never stops a sweep (only a dead worker makes Ray retry).

Workers are reused across trials, so the data set and the imports are kept per process.
"""
from __future__ import annotations

import copy
import functools
import io
import json
import os
import socket
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, Union

import psutil
import torch

from model_zoo import create_model
from sweep_service import data as datasets
from sweep_service import heap
from sweep_service.compute import Compute, FormatRace, candidates
from sweep_service.grid import BASELINE, COMPLETED, FAILED, TrialSpec
from sweep_service.measure import count_macs, count_params, cpu_latency_ms, serialized_size
from sweep_service.plugins import get_plugin
from sweep_service.pruning import check_masks, select_layers, speedup
from sweep_service.quiet import quiet_nni
from sweep_service.training import evaluate, train


@dataclass
class TrialOutput:
    """What a worker sends back: the row's fields plus the model's bytes to save."""

    result: dict[str, Any]
    artifact: bytes | None = None  # baseline: state_dict; pruned: the whole pruned module
    started_at: float = 0.0  # wall clock, for the coordinator's wait-time figure


@dataclass
class _Phases:
    times: dict[str, float] = field(default_factory=dict)
    current: str = "start"

    def run(self, phase: str, fn, *args, **kwargs):
        self.current = phase
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.times[f"time_{phase}_s"] = self.times.get(f"time_{phase}_s", 0.0) + time.perf_counter() - start


@functools.lru_cache(maxsize=1)
def prepare_process() -> float:
    """Once per worker process: keep freed memory in the heap for the next training step
    (sweep_service.heap), quiet libraries, and import what every trial needs (torchvision,
    NNI, torch's FLOP counter). Ray runs it as a worker process starts (its runtime
    environment's setup hook, sweep_service.ray_settings); else the first trial does.
    Returns the seconds it took."""
    start = time.perf_counter()
    heap.keep_freed_memory()
    import torch.utils.flop_counter  # noqa: F401
    import torchvision.datasets  # noqa: F401
    import torchvision.models  # noqa: F401

    with quiet_nni():
        import nni.compression.pruning  # noqa: F401
        import nni.compression.speedup  # noqa: F401
    return time.perf_counter() - start


# (model name, image size) -> parameters and MACs of the unpruned model, whose architecture
# is the name's (with a 10-class head) for every trial of the model.
_UNPRUNED_FIGURES: dict[tuple[str, int], tuple[int, int]] = {}


def _unpruned_figures(model: torch.nn.Module, spec: TrialSpec) -> tuple[int, int]:
    """Parameters and MACs of the unpruned `model`, counted once per worker process for each
    model and image size rather than at the start of each trial (10-20 ms each here)."""
    key = (spec.model, spec.image_size)
    if key not in _UNPRUNED_FIGURES:
        _UNPRUNED_FIGURES[key] = count_params(model), count_macs(model, spec.image_size)
    return _UNPRUNED_FIGURES[key]


def _threads_for(spec: TrialSpec) -> int:
    return max(1, int(spec.cpus))


Checkpoint = Union[bytes, Callable[[], bytes]]


def run_trial(spec: TrialSpec, baseline_checkpoint: Checkpoint | None = None,
              plugins_dir: str | None = None, computes: Sequence[str] = ()) -> TrialOutput:
    """Run one trial. `baseline_checkpoint`: the baseline's state_dict bytes, or a function
    that fetches them. `computes`: the formats this model's baseline found fastest, if
    known (several if they came close: this trial races them)."""
    started_at = time.time()
    phases = _Phases()
    startup_start = time.perf_counter()
    result: dict[str, Any] = {"worker_host": socket.gethostname(), "worker_pid": os.getpid()}
    artifact = model = masks = None
    try:
        threads = _threads_for(spec)
        torch.set_num_threads(threads)
        result.update(threads=threads, allocator=heap.allocator())
        prepare_process()
        phases.times["time_startup_s"] = time.perf_counter() - startup_start
        device = torch.device("cuda" if spec.gpus > 0 and torch.cuda.is_available() else "cpu")
        torch.manual_seed(spec.seed)

        splits = phases.run("data", datasets.load, spec.dataset, spec.data_root)
        train_set = datasets.subset(splits.train, spec.train_subset, spec.seed)
        test_set = datasets.subset(splits.test, spec.test_subset, spec.seed + 1)
        train_batches = datasets.TensorBatches(train_set, batch_size=spec.batch_size,
                                               image_size=spec.image_size, shuffle=True,
                                               augment=spec.augment, seed=spec.seed)
        test_batches = datasets.TensorBatches(test_set, batch_size=spec.eval_batch_size,
                                              image_size=spec.image_size)

        model = phases.run("build", _build_start_model, spec, baseline_checkpoint)
        params_before, macs_before = _unpruned_figures(model, spec)
        result.update(params_before=params_before, macs_before=macs_before)

        if spec.kind != BASELINE:
            plugin = get_plugin(spec.pruner, plugins_dir).create()
            layers = select_layers(model, spec.model, spec.layers)
            calibration = None
            if plugin.needs_data:
                calibration = datasets.TensorBatches(train_set, batch_size=spec.batch_size,
                                                     image_size=spec.image_size,
                                                     max_batches=spec.calibration_batches)
            masks = phases.run("prune", plugin.masks, copy.deepcopy(model).eval(), spec.rate,
                               layers, calibration)
            phases.run("prune", check_masks, model, masks, layers, spec.rate)
            model = phases.run("speedup", speedup, model, masks, spec.image_size)

        model.to(device)
        compute_or_race = phases.run("finetune", _compute_for, spec, device, computes)
        phases.run("finetune", train, model, train_batches, epochs=spec.epochs,
                   optimizer_settings=spec.optimizer, device=device,
                   steps_per_epoch=len(train_batches), compute=compute_or_race)
        chosen = compute_or_race
        if isinstance(compute_or_race, FormatRace):
            chosen = compute_or_race.winner
            result["compute_race"] = json.dumps({name: round(seconds, 6)
                                                 for name, seconds in compute_or_race.timings.items()})
        result["compute"] = chosen.name
        accuracy = phases.run("eval", evaluate, model, test_batches, device, chosen)
        # Measured and shipped in the standard layout, whatever layout trained it.
        model.cpu().to(memory_format=torch.contiguous_format)

        def measure() -> tuple[dict[str, Any], bytes]:
            params_after, macs_after = count_params(model), count_macs(model, spec.image_size)
            saved = _artifact(model, spec)
            return dict(
                params_after=params_after,
                param_reduction=1 - params_after / params_before,
                macs_after=macs_after,
                mac_reduction=1 - macs_after / macs_before,
                model_size_bytes=serialized_size(model) if spec.kind == BASELINE else len(saved),
                latency_ms=cpu_latency_ms(model, spec.image_size, runs=spec.latency_runs),
            ), saved

        figures, artifact = phases.run("measure", measure)
        result.update(figures, accuracy=accuracy, status=COMPLETED)
    except Exception as exc:
        tail = "".join(traceback.format_exception(exc)[-3:]).strip()
        result.update(status=FAILED, error=f"{phases.current} failed: {type(exc).__name__}: {exc}\n{tail}")
    result.update(phases.times)
    result["time_total_s"] = time.perf_counter() - startup_start
    model = masks = None  # drop this trial's tensors before trimming the heap
    heap.release()
    result["worker_rss_mb"] = psutil.Process().memory_info().rss / 2**20
    result["worker_shared_mb"] = _object_store_pages_mb()
    return TrialOutput(result=result, artifact=artifact, started_at=started_at)


def run_on_worker(spec: TrialSpec, checkpoint: list, plugins_folder: str, computes: list[str]) -> TrialOutput:
    """The Ray task the coordinator dispatches. `checkpoint` holds the baseline's ObjectRef,
    if any: inside a list, Ray hands over the reference instead of the bytes, so the trial
    fetches them when it builds its model and drops them once loaded, rather than holding a
    copy to its end. It lives here, not in the coordinator, so that a worker resolving it
    imports only what trials need."""
    import ray

    fetch = (lambda: ray.get(checkpoint[0])) if checkpoint else None
    return run_trial(spec, fetch, plugins_folder, computes)


def _compute_for(spec: TrialSpec, device: torch.device, known: Sequence[str]) -> Compute | FormatRace:
    """The config's explicit choice; else the formats the baseline measured fastest that this
    worker can run (raced again if several); else a race of all the candidates."""
    if spec.compute != "auto":
        chosen = Compute.parse(spec.compute)
        chosen.check(device)
        return chosen
    usable = []
    for name in known:
        compute = Compute.parse(name)
        try:
            compute.check(device)
            usable.append(compute)
        except ValueError:  # a different kind of worker than the baseline's
            pass
    if len(usable) == 1:
        return usable[0]
    return FormatRace(usable or candidates(device), device)


def _object_store_pages_mb() -> float | None:
    """The part of this process's RSS that is shared memory: on a Ray worker, pages of the
    node's object store it has read or written (checkpoints in, models out). The OS counts
    them in every worker that touched them; Ray's memory guide subtracts them to get a
    worker's own memory. None where /proc is not there."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("RssShmem:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _build_start_model(spec: TrialSpec, baseline_checkpoint: Checkpoint | None) -> torch.nn.Module:
    """Baseline trials and `prune_from: pretrained` start from the configured weights;
    other pruned trials from the fine-tuned baseline."""
    if spec.kind == BASELINE or spec.prune_from == "pretrained":
        return create_model(spec.model, weights=spec.weights, weights_dir=spec.weights_dir)
    if baseline_checkpoint is None:
        raise ValueError(f"pruned trial {spec.label} needs its baseline checkpoint")
    # Built without memory or random init (0.1 s for resnet18): every tensor comes from
    # the checkpoint.
    with torch.device("meta"):
        model = create_model(spec.model, weights="none")
    # Read afresh each trial (tens of ms): a per-worker cache of every model's weights
    # would keep a worker's memory growing with each new model it meets.
    saved = baseline_checkpoint() if callable(baseline_checkpoint) else baseline_checkpoint
    model.load_state_dict(torch.load(io.BytesIO(saved), map_location="cpu", weights_only=True), assign=True)
    unset = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if unset:
        raise ValueError(f"the baseline checkpoint of {spec.model} does not set {unset}")
    return model


def _artifact(model: torch.nn.Module, spec: TrialSpec) -> bytes:
    """Baselines: the state dict their pruned trials load. Pruned: the whole module, as shipped."""
    buffer = io.BytesIO()
    torch.save(model.state_dict() if spec.kind == BASELINE else model, buffer)
    return buffer.getvalue()
