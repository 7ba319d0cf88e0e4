"""One trial, as run on a Ray worker: a TrialSpec in, a result dict out.

A baseline trial fine-tunes the pretrained model with a new 10-class head. A pruned
trial starts from the baseline's checkpoint (or the pretrained weights), finds the groups
of coupled layers, asks its plugin for scores or masks, forms the masks, removes the
masked channels with NNI's ModelSpeedup, checks that the sped-up model computes what
the masked model computes (an unstructured plugin's masked weights are kept at zero
instead: nothing is removed), evaluates it, fine-tunes, evaluates, counts its parameters
and MACs, and exports its deployable variants (ONNX fp32, and fp16/int8 as the sweep
asks), each evaluated in ONNX Runtime. Latency and memory are measured later, by the
sweep's measurement stage, never beside training. Failures come back as results with the
error text, never as exceptions, so one bad trial never stops a sweep (only a dead worker
raises, and the coordinator retries the trial).

In an adaptive sweep a pruned trial may stop part-way through its fine-tune (`stop_at`)
and send back a rung checkpoint, from which a later task, on any worker, continues it
(`resume_from`) to exactly the weights of an uninterrupted run. It exports no variants at
a rung: most such trials go on, and one that stops there gets them from its saved model
with the sweep's other missing variants.

Workers are reused across trials, so the data set and the imports are kept per process.
"""
from __future__ import annotations

import copy
import functools
import io
import json
import math
import os
import socket
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Union

import psutil
import torch

from model_zoo import create_model
from sweep_service.plugins import UNSTRUCTURED, get_plugin
from sweep_service.provenance import library_versions
from sweep_service.quiet import quiet_nni
from sweep_service.spec import BASELINE, COMPLETED, FAILED, TrialSpec
from sweep_service.worker import data as datasets
from sweep_service.worker import heap, unstructured
from sweep_service.worker.compute import Compute, probe_formats
from sweep_service.worker.groups import channel_groups
from sweep_service.worker.measure import count_macs, count_params
from sweep_service.worker.pruning import (
    channel_sparsity,
    plan_pruning,
    prune_and_verify,
    pruned_channels,
    run_plugin,
    select_layers,
)
from sweep_service.worker.training import FineTune, evaluate, with_precise_batch_norm
from sweep_service.worker.variants import Variant, make_variants


@dataclass
class TrialOutput:
    """What a worker sends back: the row's fields plus the model's bytes to save."""

    result: dict[str, Any]
    artifact: bytes | None = None  # baseline: state_dict; pruned: the whole pruned module
    started_at: float = 0.0  # wall clock, for the coordinator's wait-time figure
    variants: list[Variant] = field(default_factory=list)  # the ONNX files to save, with their figures
    rung_checkpoint: bytes | None = None  # a fine-tune stopped before its end: what continues it


@dataclass
class _Phases:
    times: dict[str, float] = field(default_factory=dict)
    current: str = "startup"
    on_enter: Callable[[str], None] | None = None  # told each phase as the trial enters it

    def enter(self, phase: str) -> None:
        self.current = phase
        if self.on_enter is not None:
            self.on_enter(phase)

    def run(self, phase: str, fn, *args, **kwargs):
        if phase != self.current:
            self.enter(phase)
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.times[f"time_{phase}_s"] = self.times.get(f"time_{phase}_s", 0.0) + time.perf_counter() - start


@functools.lru_cache(maxsize=1)
def prepare_process() -> float:
    """Once per worker process: keep freed memory in the heap for the next training step
    (sweep_service.worker.heap), quiet libraries, and import what every trial needs
    (torchvision, NNI, Torch-Pruning, torch's FLOP counter). Ray runs it as a worker
    process starts (the runtime environment's setup hook, sweep_service.coordinator.cluster);
    else the first trial does. Returns the seconds it took."""
    start = time.perf_counter()
    heap.keep_freed_memory()
    import torch.utils.flop_counter  # noqa: F401
    import torch_pruning  # noqa: F401
    import torchvision.datasets  # noqa: F401
    import torchvision.models  # noqa: F401

    with quiet_nni():
        import nni.compression.pruning  # noqa: F401
        import nni.compression.speedup  # noqa: F401
        import onnxruntime.quantization  # noqa: F401
        import onnxscript  # noqa: F401  (torch's ONNX exporter)
    return time.perf_counter() - start


# Training images whose statistics a model stopped at a rung is evaluated with (precise
# batch norm): a few thousand estimate each channel's mean and variance well.
PRECISE_BN_IMAGES = 2048

# (model name, image size) -> parameters and MACs of the unpruned model, whose architecture
# is the name's (with a 10-class head) for every trial of the model.
_UNPRUNED_FIGURES: dict[tuple[str, int], tuple[int, int]] = {}


def _unpruned_figures(model: torch.nn.Module, spec: TrialSpec) -> tuple[int, int]:
    key = (spec.model, spec.image_size)
    if key not in _UNPRUNED_FIGURES:
        _UNPRUNED_FIGURES[key] = count_params(model), count_macs(model, spec.image_size)
    return _UNPRUNED_FIGURES[key]


def _threads_for(spec: TrialSpec) -> int:
    return max(1, int(spec.cpus))


def _device_for(spec: TrialSpec) -> torch.device:
    return torch.device("cuda" if spec.gpus > 0 and torch.cuda.is_available() else "cpu")


Checkpoint = Union[bytes, Callable[[], bytes]]


def run_trial(spec: TrialSpec, baseline_checkpoint: Checkpoint | None = None,
              plugins_dir: str | None = None, compute: str = "fp32",
              on_phase: Callable[[str], None] | None = None, *, stop_at: float = 1.0,
              resume_from: Checkpoint | None = None) -> TrialOutput:
    """Run one trial. `baseline_checkpoint`: the baseline's state_dict bytes, or a function
    that fetches them. `compute`: the number format and layout every trial of this model
    trains in (sweep_service.worker.compute). `on_phase` is told the name of each phase
    (startup, data, build, prune, group, speedup, finetune, eval, measure) as the trial enters it.
    `stop_at`: the share of the fine-tune's steps to train before evaluating; short of the
    end, the output carries a rung checkpoint. `resume_from`: such a checkpoint (or a
    function that fetches it), to continue from instead of pruning."""
    started_at = time.time()
    phases = _Phases(on_enter=on_phase)
    phases.enter("startup")
    startup_start = time.perf_counter()
    result: dict[str, Any] = {"worker_host": socket.gethostname(), "worker_pid": os.getpid()}
    artifact = rung_checkpoint = model = fine_tune_state = None
    variants: list[Variant] = []
    try:
        threads = _threads_for(spec)
        torch.set_num_threads(threads)
        result.update(threads=threads, allocator=heap.allocator(), compute=compute,
                      worker_versions_json=json.dumps(library_versions(), sort_keys=True))
        prepare_process()
        phases.times["time_startup_s"] = time.perf_counter() - startup_start
        device = _device_for(spec)
        chosen = Compute.parse(compute)
        chosen.check(device)
        torch.manual_seed(spec.seed)

        splits = phases.run("data", datasets.load, spec.dataset, spec.data_root)
        train_set = datasets.subset(splits.train, spec.train_subset, spec.seed)
        test_set = datasets.subset(splits.test, spec.test_subset, spec.seed + 1)
        # Batch norm cannot train on a last batch of one image.
        train_batches = datasets.TensorBatches(train_set, batch_size=spec.batch_size,
                                               image_size=spec.image_size, shuffle=True,
                                               augment=spec.augment, seed=spec.seed, min_batch=2)
        test_batches = datasets.TensorBatches(test_set, batch_size=spec.eval_batch_size,
                                              image_size=spec.image_size)

        if resume_from is not None:
            model, fine_tune_state, earlier = phases.run("build", _load_rung_checkpoint, resume_from)
            result.update(earlier)
        else:
            model = phases.run("build", _build_start_model, spec, baseline_checkpoint)
            params_before, macs_before = _unpruned_figures(model, spec)
            result.update(params_before=params_before, macs_before=macs_before)
        params_before, macs_before = result["params_before"], result["macs_before"]

        if spec.kind != BASELINE and resume_from is None:
            result.update(_prune(spec, model, train_set, plugins_dir, phases))
            model.to(device)
            result["accuracy_pruned"] = phases.run("eval", evaluate, model, test_batches, device, chosen)

        model.to(device)
        fine_tune = FineTune(model, train_batches, epochs=spec.epochs, optimizer_settings=spec.optimizer,
                             device=device, compute=chosen)
        if fine_tune_state is not None:
            fine_tune.load_state_dict(fine_tune_state)
        phases.run("finetune", fine_tune.run, fine_tune.steps_for(stop_at))
        if fine_tune.step < fine_tune.total_steps:  # taken before evaluating draws random numbers
            rung_checkpoint = phases.run("finetune", _rung_checkpoint, model, fine_tune,
                                         {k: result[k] for k in CARRIED_FIGURES if k in result})
            # Judged, and shipped if it stops here, as its weights stand (the checkpoint keeps
            # the model as it trains on).
            calibration = datasets.TensorBatches(train_set, batch_size=spec.batch_size, image_size=spec.image_size,
                                                 max_batches=math.ceil(PRECISE_BN_IMAGES / spec.batch_size))
            model = phases.run("eval", with_precise_batch_norm, model, calibration, device, chosen)
        result["budget"] = fine_tune.budget
        if result.get("structure") == UNSTRUCTURED:
            unstructured.make_permanent(model)
        accuracy = phases.run("eval", evaluate, model, test_batches, device, chosen)
        # Counted, exported and shipped in the standard layout, whatever layout trained it.
        model.cpu().to(memory_format=torch.contiguous_format)

        def measure() -> tuple[dict[str, Any], bytes]:
            params_after, macs_after = count_params(model), count_macs(model, spec.image_size)
            saved = _artifact(model, spec)
            return dict(
                params_after=params_after,
                param_reduction=1 - params_after / params_before,
                macs_after=macs_after,
                mac_reduction=1 - macs_after / macs_before,
                weights_zeroed=unstructured.zero_share(model),
                model_size_bytes=len(saved),
            ), saved

        figures, artifact = phases.run("measure", measure)
        # A rung's model ships only if the search stops the trial there, which is decided
        # later: its variants are then made from the saved model, after the trials.
        if rung_checkpoint is None:
            calibration_batches = datasets.TensorBatches(train_set, batch_size=spec.batch_size,
                                                         image_size=spec.image_size,
                                                         max_batches=spec.calibration_batches)
            variants = phases.run("export", make_variants, model, spec.quantize, image_size=spec.image_size,
                                  calibration=calibration_batches, test_batches=test_batches, threads=threads)
        result.update(figures, accuracy=accuracy, status=COMPLETED)
    except Exception as exc:
        tail = "".join(traceback.format_exception(exc)[-3:]).strip()
        result.update(status=FAILED, error=f"{phases.current} failed: {type(exc).__name__}: {exc}\n{tail}")
    result.update(phases.times)
    result["time_total_s"] = time.perf_counter() - startup_start
    model = None  # drop this trial's tensors before trimming the heap
    heap.release()
    result["worker_rss_mb"] = psutil.Process().memory_info().rss / 2**20
    result["worker_shared_mb"] = _object_store_pages_mb()
    return TrialOutput(result=result, artifact=artifact, started_at=started_at, variants=variants,
                       rung_checkpoint=rung_checkpoint)


def _prune(spec: TrialSpec, model: torch.nn.Module, train_set: datasets.ImageSet, plugins_dir: str | None,
           phases: _Phases) -> dict[str, Any]:
    """Find the channel groups, ask the plugin, form the masks (per group or per layer),
    speed `model` up in place and check it against the masked model; returns the row's
    pruning figures. Each step is timed as its phase, which also names it in an error. An
    unstructured plugin's masks are applied to `model` instead, to be kept through
    fine-tuning."""
    plugin = phases.run("prune", lambda: get_plugin(spec.pruner, plugins_dir).create())
    layers = select_layers(model, spec.model, spec.layers)
    calibration = None
    if plugin.needs_data:
        calibration = datasets.TensorBatches(train_set, batch_size=spec.batch_size, image_size=spec.image_size,
                                             max_batches=spec.calibration_batches)
    if plugin.structure == UNSTRUCTURED:
        masks = phases.run("prune", plugin.masks, copy.deepcopy(model).eval(), spec.rate, list(layers), calibration)
        phases.run("prune", unstructured.check_weight_masks, model, masks, layers, spec.rate)
        unstructured.apply_masks(model, masks)  # made permanent after fine-tuning
        return dict(structure=UNSTRUCTURED)
    groups = phases.run("group", channel_groups, model, layers, spec.image_size)
    choice = phases.run("prune", run_plugin, plugin, model, spec.rate, layers, calibration)
    plan = phases.run("prune", plan_pruning, model, groups, choice, layers, spec.rate, spec.grouping,
                      spec.allocation, spec.round_to)
    filters_before = {name: model.get_submodule(name).weight.shape[0] for name in layers}
    difference = phases.run("speedup", prune_and_verify, model, groups, plan, spec.image_size)
    channels = pruned_channels(model, layers, filters_before)
    return dict(structure=plugin.structure, speedup_max_abs_diff=difference,
                channel_sparsity=channel_sparsity(channels), pruned_channels_json=json.dumps(channels))


def run_on_worker(spec: TrialSpec, checkpoint: list, plugins_folder: str, compute: str,
                  phases=None, stop_at: float = 1.0, resume_from: tuple = ()) -> TrialOutput:
    """The Ray task the coordinator dispatches. `checkpoint` holds the baseline's ObjectRef,
    if any, and `resume_from` a rung checkpoint's: inside a list or tuple, Ray hands over the
    reference instead of the bytes, so the trial fetches them when it builds its model and
    drops them once loaded, rather than holding a copy to its end. `phases`: the
    coordinator's TrialPhases actor (sweep_service.worker.progress), told each phase the
    trial enters."""
    import ray

    fetch = (lambda: ray.get(checkpoint[0])) if checkpoint else None
    resume = (lambda: ray.get(resume_from[0])) if resume_from else None
    on_phase = (lambda phase: phases.enter.remote(spec.key, phase)) if phases is not None else None
    return run_trial(spec, fetch, plugins_folder, compute, on_phase, stop_at=stop_at, resume_from=resume)


def measure_formats(spec: TrialSpec) -> dict[str, float]:
    """The Ray task that measures the candidate formats for `spec`'s model (`compute: auto`):
    seconds of a training step in each, fastest first, on one batch of the trial's size
    and threads, on a randomly initialised copy of the architecture (weights do not change
    the arithmetic)."""
    prepare_process()
    torch.set_num_threads(_threads_for(spec))
    torch.manual_seed(spec.seed)
    model = create_model(spec.model, weights="none")
    inputs = torch.randn(spec.batch_size, 3, spec.image_size, spec.image_size)
    labels = torch.randint(0, 10, (spec.batch_size,))
    try:
        return probe_formats(model, (inputs, labels), _device_for(spec), spec.optimizer)
    finally:
        model = None
        heap.release()


def export_saved_model(spec: TrialSpec, artifact: bytes, formats: tuple[str, ...]) -> list[Variant]:
    """The Ray task that makes `formats` variants of a completed trial from its saved model
    (`artifact`), without retraining: for a sweep that asks for more variants than its
    finished trials were made with."""
    prepare_process()
    threads = _threads_for(spec)
    torch.set_num_threads(threads)
    splits = datasets.load(spec.dataset, spec.data_root)
    train_set = datasets.subset(splits.train, spec.train_subset, spec.seed)
    test_set = datasets.subset(splits.test, spec.test_subset, spec.seed + 1)
    if spec.kind == BASELINE:
        model = create_model(spec.model, weights="none")
        model.load_state_dict(torch.load(io.BytesIO(artifact), map_location="cpu", weights_only=True))
    else:  # the whole pruned module, whose shape only it knows; written by this service
        model = torch.load(io.BytesIO(artifact), map_location="cpu", weights_only=False)
    try:
        return make_variants(
            model, formats, image_size=spec.image_size, threads=threads,
            calibration=datasets.TensorBatches(train_set, batch_size=spec.batch_size, image_size=spec.image_size,
                                               max_batches=spec.calibration_batches),
            test_batches=datasets.TensorBatches(test_set, batch_size=spec.eval_batch_size,
                                                image_size=spec.image_size))
    finally:
        model = None
        heap.release()


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
    # Built on the meta device: every tensor comes from the checkpoint, so random init
    # would be wasted work.
    with torch.device("meta"):
        model = create_model(spec.model, weights="none")
    # Read afresh each trial: a per-worker cache of every model's weights would keep a
    # worker's memory growing with each new model it meets.
    saved = baseline_checkpoint() if callable(baseline_checkpoint) else baseline_checkpoint
    model.load_state_dict(torch.load(io.BytesIO(saved), map_location="cpu", weights_only=True), assign=True)
    unset = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if unset:
        raise ValueError(f"the baseline checkpoint of {spec.model} does not set {unset}")
    return model


# What a trial measured before its fine-tune, which a trial continued from a rung checkpoint
# cannot measure again (its model is pruned and partly trained) and so reads from it.
CARRIED_FIGURES = ("params_before", "macs_before", "structure", "speedup_max_abs_diff", "channel_sparsity",
                   "pruned_channels_json", "accuracy_pruned")


def _rung_checkpoint(model: torch.nn.Module, fine_tune: FineTune, figures: dict[str, Any]) -> bytes:
    """What continues a stopped fine-tune: the pruned module itself (its architecture is the
    pruning's), the fine-tune's state, and the figures taken before the fine-tune."""
    buffer = io.BytesIO()
    torch.save({"model": model, "fine_tune": fine_tune.state_dict(), "figures": figures}, buffer)
    return buffer.getvalue()


def _load_rung_checkpoint(checkpoint: Checkpoint) -> tuple[torch.nn.Module, dict[str, Any], dict[str, Any]]:
    saved = checkpoint() if callable(checkpoint) else checkpoint
    # A whole module is a pickle (weights_only cannot read it); this one was written by a
    # worker of this sweep and kept by its coordinator.
    state = torch.load(io.BytesIO(saved), map_location="cpu", weights_only=False)
    return state["model"], state["fine_tune"], state["figures"]


def _artifact(model: torch.nn.Module, spec: TrialSpec) -> bytes:
    """Baselines: the state dict their pruned trials load. Pruned: the whole module, as shipped."""
    buffer = io.BytesIO()
    torch.save(model.state_dict() if spec.kind == BASELINE else model, buffer)
    return buffer.getvalue()
