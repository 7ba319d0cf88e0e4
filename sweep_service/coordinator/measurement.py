"""The measurement stage: latency and peak memory of every variant of a sweep, measured
with one protocol on one node that nothing else runs on meanwhile.

Which node: with `measure.on` (a Ray custom resource, e.g. "edge"), a node that offers it:
a device or a container started with `ray start --address ... --resources '{"edge": 1}'`.
Without it, the node of the cluster with the most CPUs. Either way the stage's tasks ask
for all of that node's CPUs (and all of its `on` resource) and are pinned to it, so Ray
starts nothing else there while they run, and every figure of a run comes from the same
node and CPU.

When: after the sweep's trials, always. On a local cluster the node is busy training
until then. With `on` the measuring node could start as soon as a model arrives, but the
protocol interleaves the rounds of all models (sweep_service.worker.latency), so that a
drift of the device's speed (another tenant, thermal throttling on a Raspberry Pi) touches
every model alike and the models are compared fairly; that needs them all at hand. The
cost is a few seconds at the end of the sweep (docs/edge.md has the figures).

The coordinator reads the saved variant files and hands their bytes to an actor on the
measuring node (sweep_service.worker.latency.MeasuringNode) through Ray's object store, so
that node needs no shared filesystem. It hands them one file at a time: a group's files
together would not fit in a small node's object store, and Ray writes what does not fit to
disk, which fails once the disk is 95 % full. Models are measured in groups of whole
architectures (a baseline with all its pruned variants and formats, so that those are
always compared within one process) of at most GROUP_BYTES of files, one group after the
other.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from sweep_service.coordinator.store import ResultStore
from sweep_service.coordinator.variants import make_missing_variants
from sweep_service.report import fmt
from sweep_service.report.results import trial_label
from sweep_service.spec import BASELINE, COMPLETED
from sweep_service.worker.runtime import FORMATS

# Model files one measuring process loads at once: ONNX Runtime holds about 1.5-4x a
# file's size in memory, so a group stays well within a small device's RAM.
GROUP_BYTES = 256 * 2**20
FINISHED, FAILED = "finished", "failed"
# One model is "really" slower (faster) than another measured in the same run when it was
# slower (faster) in at least this share of the rounds, in which the two took turns: a sign
# test over 10 rounds gives p < 0.011 at 9 of 10 (the chance that a model no slower loses 9
# or 10 coin tosses). Otherwise the two are the same within the host's noise.
CONSISTENT_ROUNDS = 0.9
FASTER, SLOWER, SAME = "faster", "slower", "same"
# Two runs of the same protocol on the same node "agree" on a variant whose median moved by
# at most this share between them.
AGREE_WITHIN = 0.10


class MeasurementUnavailable(RuntimeError):
    """The stage cannot run: no node to measure on, no variant files."""


@dataclass
class StageResult:
    run_id: int
    variants: int
    seconds: float
    node: dict[str, Any]


def protocol(settings, image_size: int) -> dict[str, Any]:
    """The measuring protocol of a sweep's `measure` settings (sweep_service.worker.latency)."""
    return dict(threads=settings.threads, batch_sizes=list(settings.batch_sizes), warmup=settings.warmup,
                rounds=settings.rounds, runs=settings.runs, image_size=image_size)


def check_reachable(on: str | None) -> None:
    """Raise MeasurementUnavailable if a node offering `on` can never join: the coordinator
    would start a local cluster of its own (no RAY_ADDRESS)."""
    if on and not os.environ.get("RAY_ADDRESS"):
        raise MeasurementUnavailable(
            f"measure.on is {on!r} but no Ray cluster is given (RAY_ADDRESS is not set), and a local one has no "
            f"node offering {on!r}: start a head with `ray start --head`, join the measuring device with "
            f"`ray start --address HEAD:6379 --resources '{{\"{on}\": 1}}'`, and set RAY_ADDRESS=HEAD:6379; "
            "or drop measure.on to measure on this machine")


def pick_node(ray, on: str | None, *, wait_s: float, log: Callable[[str], Any] = print) -> dict[str, Any]:
    """The live node to measure on (an entry of ray.nodes()): one offering `on`, else the
    one with the most CPUs; ties go to the lowest node id, so that re-measuring picks the
    same node. Waits up to `wait_s` for one to join."""
    deadline, told = time.time() + wait_s, False
    while True:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        fits = [n for n in nodes if n["Resources"].get(on, 0) > 0] if on else [
            n for n in nodes if n["Resources"].get("CPU", 0) >= 1]
        if fits:
            return min(fits, key=lambda n: (-n["Resources"].get("CPU", 0), n["NodeID"]))
        if time.time() > deadline:
            wanted = f"the resource {on!r}" if on else "a CPU"
            raise MeasurementUnavailable(f"no Ray node offers {wanted} after {wait_s:.0f} s")
        if not told:
            log(f"waiting for a Ray node offering {on!r} to measure on ..." if on else
                "waiting for a Ray node with a CPU to measure on ...")
            told = True
        time.sleep(2.0)


def groups(variants: list[dict[str, Any]], limit: int = GROUP_BYTES) -> list[list[dict[str, Any]]]:
    """`variants` split into groups of whole models (all variants of a model in one group),
    each at most `limit` bytes of files unless a single model is larger, in model order."""
    by_model: dict[str, list[dict[str, Any]]] = {}
    for variant in variants:
        by_model.setdefault(variant["model"], []).append(variant)
    packed: list[list[dict[str, Any]]] = []
    size = 0
    for members in by_model.values():
        members_size = sum(v["size_bytes"] or 0 for v in members)
        if packed and size + members_size <= limit:
            packed[-1] += members
            size += members_size
        else:
            packed.append(list(members))
            size = members_size
    return packed


def measurable(store: ResultStore, sweep_id: str) -> list[dict[str, Any]]:
    """Variants of completed trials whose file is there."""
    return [v for v in store.variants(sweep_id)
            if v["trial_status"] == COMPLETED and v["error"] is None and v["path"] and Path(v["path"]).is_file()]


def needs_measuring(store: ResultStore, sweep_id: str) -> bool:
    """Whether a measurable variant has no figures in the sweep's latest finished run."""
    measured = {m["variant_id"] for m in store.measurements(sweep_id)}
    return any(v["id"] not in measured for v in measurable(store, sweep_id))


def run_stage(ray, store: ResultStore, sweep_id: str, settings, image_size: int, *, on: str | None = None,
              wait_s: float = 600.0, log: Callable[[str], Any] = print) -> StageResult:
    """Measure every measurable variant of the sweep (one protocol, one node) and record a
    measurement run; point each trial's latency at its fp32 variant. `on` overrides
    `settings.on`. Raises MeasurementUnavailable if there is nothing to measure or nowhere."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from sweep_service.coordinator.cluster import NO_TRIAL_RUNTIME_ENV
    from sweep_service.worker.latency import MeasuringNode

    started = time.perf_counter()
    on = on if on is not None else settings.on
    variants = measurable(store, sweep_id)
    lost = [v["path"] for v in store.variants(sweep_id) if v["path"] and not Path(v["path"]).is_file()]
    if lost:
        log(f"warning: {len(lost)} variant files are gone and not measured, e.g. {lost[0]}")
    if not variants:
        raise MeasurementUnavailable(f"sweep {sweep_id} has no variant files to measure")
    node = pick_node(ray, on, wait_s=wait_s, log=log)
    cpus = node["Resources"].get("CPU", 0)
    options: dict[str, Any] = dict(num_cpus=cpus, max_restarts=0, runtime_env=NO_TRIAL_RUNTIME_ENV,
                                   scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False))
    if on:
        options["resources"] = {on: node["Resources"][on]}
    settings_used = protocol(settings, image_size)
    run_id = store.begin_measurement(sweep_id, settings_used, on)
    where = node.get("NodeManagerHostname") or node["NodeID"][:12]
    log(f"measuring {len(variants)} variants on {where} ({cpus:g} CPUs held, {settings.threads} thread(s), "
        f"batch {', '.join(map(str, settings.batch_sizes))}) ...")
    identity: dict[str, Any] = {}
    measuring = ray.remote(MeasuringNode).options(**options).remote()
    try:
        for group in groups(variants):
            for variant in group:
                ray.get(measuring.receive.remote(str(variant["id"]), Path(variant["path"]).read_bytes()))
            answer = ray.get(measuring.measure.remote(settings_used, max(1, int(cpus))))
            identity = answer["node"]
            store.record_measurements(run_id, [
                dict(variant_id=int(name), batch_size=batch, threads=settings.threads,
                     latency_ms=figures["latency_ms"], latency_p10_ms=figures["latency_p10_ms"],
                     latency_p90_ms=figures["latency_p90_ms"], round_spread=figures["round_spread"],
                     round_medians_json=json.dumps(figures["round_medians_ms"]), peak_rss_mb=figures["peak_rss_mb"],
                     **identity)
                for name, by_batch in answer["models"].items() for batch, figures in by_batch.items()])
    except BaseException as exc:  # interrupted too: the run's figures are incomplete
        store.end_measurement(run_id, FAILED, seconds=time.perf_counter() - started, variants=0,
                              error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        _close(ray, measuring)
    _point_trials_at_fp32(store, sweep_id, run_id)
    seconds = time.perf_counter() - started
    store.end_measurement(run_id, FINISHED, seconds=seconds, variants=len(variants))
    return StageResult(run_id, len(variants), seconds, identity)


def _close(ray, measuring) -> None:
    """Remove the measuring actor's files and end it, which frees its node."""
    try:
        ray.get(measuring.close.remote(), timeout=60)
    except Exception:  # the actor or its node is gone: nothing left to remove here
        pass
    ray.kill(measuring)


def after_trials(ray, config, store: ResultStore, sweep_id: str, specs: list, *, wait_s: float,
                 log: Callable[[str], Any] = print) -> StageResult | None:
    """What a sweep does once its trials are done: make the variants finished trials lack,
    then measure every variant if any has no figures yet. A stage that cannot run is
    reported, not raised: the trials are recorded, and `measure` can run it later."""
    make_missing_variants(ray, store, sweep_id, specs, config.output_dir / "models", cpus=config.resources.cpus,
                          gpus=config.resources.gpus, log=log)
    if not needs_measuring(store, sweep_id):
        return None
    try:
        stage = run_stage(ray, store, sweep_id, config.measure, config.image_size, wait_s=wait_s, log=log)
    except Exception as exc:  # no node, or the measuring task failed
        log(f"warning: the variants were not measured ({type(exc).__name__}: {exc}); measure them later with "
            f"`python -m sweep_service measure --db {config.database}`")
        return None
    log(f"measured {stage.variants} variants in {stage.seconds:.1f} s on {stage.node.get('node_host')} "
        f"({stage.node.get('cpu_model')}); the table: python -m sweep_service status --db {config.database} "
        "--variants")
    return stage


def stored_settings(config_json: str):
    """(measure settings, image size) of a recorded sweep; a sweep recorded before the
    stage existed is measured with the default protocol."""
    from sweep_service.coordinator.config import MeasureSettings

    config = json.loads(config_json)
    return MeasureSettings(**config.get("measure", {})), int(config["image_size"])


def _point_trials_at_fp32(store: ResultStore, sweep_id: str, run_id: int) -> None:
    """Each trial's `latency_ms`: its fp32 variant's median at the smallest batch size."""
    rows = [m for m in store.measurements(sweep_id, run_id) if m["format"] == "fp32"]
    smallest = min((m["batch_size"] for m in rows), default=None)
    for m in rows:
        if m["batch_size"] == smallest:
            source = (f"{m['runtime']} fp32, batch {smallest}, {m['threads']} thread(s), "
                      f"on {m['node_host']} ({m['cpu_model']})")
            store.set_latency(sweep_id, m["trial_key"], m["latency_ms"], source)


def compare_latency(model: dict[str, Any], reference: dict[str, Any]) -> str:
    """FASTER, SLOWER or SAME: how a model's latency compares with a reference's (two
    measurement rows of one run and batch size, e.g. a pruned model and its baseline), by
    its rounds: a consistent difference (CONSISTENT_ROUNDS of the rounds, in which the two
    ran one right after the other) or none that the host's noise would not explain."""
    ours, theirs = json.loads(model["round_medians_json"]), json.loads(reference["round_medians_json"])
    if sum(a > b for a, b in zip(ours, theirs)) >= CONSISTENT_ROUNDS * len(ours):
        return SLOWER
    if sum(a < b for a, b in zip(ours, theirs)) >= CONSISTENT_ROUNDS * len(ours):
        return FASTER
    return SAME


@dataclass
class Agreement:
    """How a measurement run's medians compare with an earlier run of the same protocol on
    the same node: `changes` pairs each of this run's rows with its relative change,
    largest first."""

    earlier_run: int
    changes: list[tuple[dict[str, Any], float]]

    @property
    def within(self) -> int:
        return sum(abs(change) <= AGREE_WITHIN for _, change in self.changes)


def agreement(store: ResultStore, sweep_id: str, run_id: int) -> Agreement | None:
    """Run `run_id` against the latest earlier finished run of the sweep with the same
    protocol on the same node (host and CPU) that measured any of the same variants, or None.
    A node's speed drifts between runs (docs/edge.md), so this tells how far its figures
    can be compared across runs; within a run they are compared fairly."""
    runs = store.measurement_runs(sweep_id)
    protocol = next(r["protocol_json"] for r in runs if r["id"] == run_id)
    this = {(m["variant_id"], m["batch_size"]): m for m in store.measurements(sweep_id, run_id) if m["latency_ms"]}
    nodes = {(m["node_host"], m["cpu_model"]) for m in this.values()}
    for run in reversed(runs):
        if run["id"] >= run_id or run["status"] != FINISHED or run["protocol_json"] != protocol:
            continue
        before = {(m["variant_id"], m["batch_size"]): m for m in store.measurements(sweep_id, run["id"])
                  if m["latency_ms"]}
        if {(m["node_host"], m["cpu_model"]) for m in before.values()} != nodes:
            continue
        changes = [(m, m["latency_ms"] / before[key]["latency_ms"] - 1) for key, m in this.items() if key in before]
        if changes:
            return Agreement(run["id"], sorted(changes, key=lambda change: -abs(change[1])))
    return None


def agreement_line(found: Agreement, shown: int = 3) -> str:
    """One line for the `measure` command: how many variants agree with the earlier run, and
    the ones that moved most."""
    batches = {m["batch_size"] for m, _ in found.changes}

    def label(m: dict[str, Any]) -> str:
        return trial_label(m) + (f" batch {m['batch_size']}" if len(batches) > 1 else "")

    moved = ", ".join(f"{label(m)} {change:+.0%}" for m, change in found.changes[:shown])
    return (f"against measurement run {found.earlier_run} (same node and protocol): {found.within} of "
            f"{len(found.changes)} within {AGREE_WITHIN:.0%}; most moved: {moved}. A node's speed drifts between "
            "runs; models are compared fairly within one (docs/edge.md)")


def stage_share(store: ResultStore, sweep_id: str) -> tuple[float, float] | None:
    """(seconds of the sweep's latest finished measurement run, its share of the wall time of
    the sweep's latest run), or None if it has not been measured while a run was timed."""
    sweep = store.sweep(sweep_id)
    runs = [r for r in store.measurement_runs(sweep_id) if r["status"] == FINISHED]
    if not runs or not sweep["started_at"] or not sweep["finished_at"]:
        return None
    wall = (sweep["finished_at"] - sweep["started_at"]).total_seconds()
    if runs[-1]["started_at"] < sweep["started_at"] or wall <= 0:
        return None
    return runs[-1]["seconds"], runs[-1]["seconds"] / wall


def summary_lines(store: ResultStore, sweep_id: str) -> list[str]:
    """The sweep's variants as a table: accuracy, size and the latest run's figures at the
    smallest batch size, each latency also against its trial's fp32 variant on the same node."""
    figures = {}
    measured = store.measurements(sweep_id)
    smallest = min((m["batch_size"] for m in measured), default=None)
    for m in measured:
        if m["batch_size"] == smallest:
            figures[m["variant_id"]] = m
    trials = {t["key"]: t for t in store.trials(sweep_id)}
    fp32 = {v["trial_key"]: figures.get(v["id"]) for v in store.variants(sweep_id) if v["format"] == "fp32"}
    header = (f"{'model':<14} {'pruner':<9} {'rate':>4}  {'pruning':<20} {'format':<6} {'accuracy':>8} "
              f"{'size MB':>8} {'deflated':>8}  {'latency ms [p10-p90]':<22} {'vs fp32':>7} {'peak MB':>7}")
    lines = [header]
    ordered = sorted(store.variants(sweep_id), key=lambda v: (v["model"], v["kind"] != BASELINE, v["pruner"],
                                                               v["rate"], FORMATS.index(v["format"])))
    for v in ordered:
        trial = trials[v["trial_key"]]
        pruner = v["pruner"] if v["kind"] != BASELINE else "-"
        if v["error"]:
            lines.append(f"{v['model']:<14} {pruner:<9} {_rate(v)}  {fmt.pruning(trial):<20} {v['format']:<6} "
                         f"failed: {v['error'].splitlines()[0]}")
            continue
        m, reference = figures.get(v["id"]), fp32.get(v["trial_key"])
        latency = (f"{m['latency_ms']:.3f} [{m['latency_p10_ms']:.3f}-{m['latency_p90_ms']:.3f}]"
                   if m else "not measured")
        versus = f"{m['latency_ms'] / reference['latency_ms']:.2f}x" if m and reference else "-"
        peak = f"{m['peak_rss_mb']:.0f}" if m and m["peak_rss_mb"] is not None else "-"
        lines.append(f"{v['model']:<14} {pruner:<9} {_rate(v)}  {fmt.pruning(trial):<20} {v['format']:<6} "
                     f"{v['accuracy']:>8.1%} {v['size_bytes'] / 1e6:>8.2f} {v['compressed_bytes'] / 1e6:>8.2f}  "
                     f"{latency:<22} {versus:>7} {peak:>7}")
    nodes = {(m["node_host"], m["cpu_model"], m["cpus"]) for m in measured}
    if nodes:
        lines.append("measured on " + "; ".join(f"{host} ({cpu}, {cpus:g} CPUs)" for host, cpu, cpus in nodes)
                     + f", batch {smallest}" + (f", {measured[0]['threads']} thread(s)" if measured else ""))
    return lines


def _rate(variant: dict[str, Any]) -> str:
    return f"{variant['rate']:>4.0%}" if variant["kind"] != BASELINE else f"{'-':>4}"

