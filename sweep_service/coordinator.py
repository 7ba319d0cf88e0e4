"""The coordinator: expands the grid, dispatches trials to Ray, records results.

It is the only writer of the results database. Baselines run first; each model's pruned
trials are dispatched once its baseline checkpoint exists. At most as many trials are
in flight as the cluster has slots for, so `running` in the database means running.
A trial whose worker dies is retried by Ray (`max_retries`); a trial that fails in its
own code comes back as a failed result and the sweep goes on.
"""
from __future__ import annotations

import heapq
import json
import math
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from model_zoo import WeightsUnavailableError
from model_zoo._registry import fetch_imagenet_weights
from sweep_service import data as datasets
from sweep_service.compute import FormatShortlist
from sweep_service.config import SweepConfig
from sweep_service.files import write_atomic
from sweep_service.grid import BASELINE, COMPLETED, FAILED, TrialSpec, expand
from sweep_service.plugins import plugins_dir
from sweep_service.quiet import silence_libraries
from sweep_service.ray_settings import start_ray
from sweep_service.store import ResultStore
from sweep_service.trial import run_on_worker
from sweep_service.versions import library_versions

# The report is redrawn on the coordinator, which shares the cores with the trials: at
# most once a minute, and spending at most this share of a core. The first redraw's cost
# is a guess (with matplotlib's import, about 2 s here); later ones use the last one's.
# Once no trial is left to start and a slot is free, its core is, and the report is
# redrawn at once, if the running trials are expected to outlast the redraw: a result that
# arrives during one waits for it, and after the last result the report is drawn anyway.
REPORT_INTERVAL_S = 60.0
REPORT_CPU_SHARE = 0.01
FIRST_REPORT_COST_S = 2.0
WORKER_WAIT_S = 600.0
# The last trials are chosen by looking ahead (pick_next) once at most this many per slot
# are left; before that, longest first, whose order ahead matters little.
PLAN_AHEAD = 8

class SweepAborted(RuntimeError):
    """The sweep cannot start (data or weights missing, no Ray workers...)."""

@dataclass
class SweepSummary:
    sweep_id: str
    counts: dict[str, int]
    ran: int
    skipped: int
    wall_s: float
    report: Path | None = None
    failed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        # Failed trials are results, not errors; the sweep is fine if nothing is left over.
        return self.counts.get("pending", 0) == 0 and self.counts.get("running", 0) == 0

def prepare_inputs(config: SweepConfig) -> None:
    """Fail before Ray starts if the data set or the pretrained weights cannot be had."""
    try:
        datasets.prepare(config.dataset, config.data_root)
    except datasets.DatasetUnavailableError as exc:
        raise SweepAborted(str(exc)) from None
    if config.weights == "imagenet":
        for model in config.models:
            try:
                fetch_imagenet_weights(model, config.weights_dir)
            except WeightsUnavailableError as exc:
                raise SweepAborted(str(exc)) from None

def _slots(ray, config: SweepConfig) -> int:
    resources = ray.cluster_resources()
    slots = int(resources.get("CPU", 0) // config.resources.cpus)
    if config.resources.gpus > 0:
        slots = min(slots, int(resources.get("GPU", 0) // config.resources.gpus))
    return slots

def estimate_epoch_seconds(points: list[tuple[float, float]], kept: float) -> float:
    """Epoch time of a model pruned to keep `kept` of its filters, from its finished trials'
    (kept, seconds) points: a fitted line, or with one share known, proportional to the
    share kept. Time does not shrink in proportion for every model (mobilenet_v2's barely
    does), hence the fit once there are two shares. 0 with nothing known."""
    if not points:
        return 0.0
    if len({k for k, _ in points}) < 2:
        return statistics.mean(s / k for k, s in points) * kept
    fit = statistics.linear_regression([k for k, _ in points], [s for _, s in points])
    return max(fit.intercept + fit.slope * kept, 0.0)


def pick_next(estimates: list[float], busy_for: list[float]) -> int:
    """Index into `estimates` (seconds) of the trial to start on a free slot while the other
    slots stay busy for `busy_for` seconds more: the one after which the rest, dispatched
    longest first, would end soonest; of equals, the longest.

    Longest first alone tends to end a sweep on one trial while other slots idle (5 slot-
    seconds at the end of the benchmark grid's runs). In a simulation of 12 last trials
    of that grid's sizes, with estimates off by up to 7 %, this choice ended them 1 s
    sooner on average on 2 slots.
    """
    order = sorted(range(len(estimates)), key=lambda i: -estimates[i])
    best, best_end, tried = order[0], math.inf, set()
    for first in order:
        if estimates[first] in tried:
            continue
        tried.add(estimates[first])
        slots = [estimates[first], *busy_for]
        heapq.heapify(slots)
        for i in order:
            if i != first:
                heapq.heapreplace(slots, slots[0] + estimates[i])
        end = max(slots)
        if end < best_end - 1e-9:
            best, best_end = first, end
    return best


class _Dispatcher:
    """Keeps the cluster's slots busy and records every result as it arrives."""

    def __init__(self, ray, config: SweepConfig, store: ResultStore, sweep_id: str, bar: tqdm):
        self.ray = ray
        self.config = config
        self.store = store
        self.sweep_id = sweep_id
        self.bar = bar
        self.remote = ray.remote(run_on_worker).options(
            num_cpus=config.resources.cpus, num_gpus=config.resources.gpus,
            max_retries=config.max_retries, retry_exceptions=False)
        self.in_flight: dict[Any, tuple[TrialSpec, float]] = {}
        self.checkpoints: dict[str, Any] = {}  # baseline key -> ObjectRef of its state_dict bytes
        # model -> (share of filters kept, seconds per epoch) of its finished trials
        self.speeds: dict[str, list[tuple[float, float]]] = {}
        self.overheads: dict[str, list[float]] = {}  # model -> seconds besides epochs, per pruned trial
        self.computes: dict[str, FormatShortlist] = {}  # baseline key -> formats its trials use or race
        self.failed: list[str] = []
        self.ran = 0  # trials that ran (for the summary)
        self.logged = 0  # trials with an outcome, including those skipped as their baseline failed
        self.started = time.time()
        self.models_dir = config.output_dir / "models"
        self.models_dir.mkdir(parents=True, exist_ok=True)

    def submit(self, spec: TrialSpec) -> None:
        checkpoint = self.checkpoints.get(spec.baseline_key) if spec.baseline_key else None
        shortlist = self.computes.get(spec.baseline_key) if spec.baseline_key else None
        computes = shortlist.formats if shortlist else []
        ref = self.remote.remote(spec, [checkpoint] if checkpoint else [], str(plugins_dir()), computes)
        self.in_flight[ref] = (spec, time.time())
        self.store.mark_running(self.sweep_id, spec.key)

    def wait_one(self) -> TrialSpec:
        done, _ = self.ray.wait(list(self.in_flight), num_returns=1)
        ref = done[0]
        spec, submitted = self.in_flight.pop(ref)
        try:
            output = self.ray.get(ref)
            result, artifact = output.result, output.artifact
            result["time_wait_s"] = max(0.0, output.started_at - submitted)
        except Exception as exc:  # the worker died more often than max_retries allows
            result, artifact = {"status": FAILED, "error": f"worker lost: {type(exc).__name__}: {exc}"}, None
        if result["status"] == COMPLETED and artifact is not None:
            result["artifact_path"] = str(self._save(spec, artifact))
            if spec.kind == BASELINE:
                self.checkpoints[spec.key] = self.ray.put(artifact)
            self.note_formats(spec, result)
            self.note_speed(spec, result)
        self.store.record(self.sweep_id, spec.key, result)
        self.store.link_baselines(self.sweep_id)
        self.ran += 1
        self._log(spec, result)
        return spec

    def skip(self, spec: TrialSpec, reason: str) -> None:
        """Record `spec` as failed without running it."""
        result = {"status": FAILED, "error": reason}
        self.store.record(self.sweep_id, spec.key, result)
        self._log(spec, result)

    def note_formats(self, spec: TrialSpec, result: dict[str, Any]) -> None:
        """Keep the compute formats a model's pruned trials use: its baseline's fastest and
        the candidates that came close to it, which those trials race. A format that falls
        out of reach in a pruned trial's race, or keeps losing, is out for the model's later
        trials (FormatShortlist)."""
        key = spec.key if spec.kind == BASELINE else spec.baseline_key
        if result.get("compute_race"):
            self.computes.setdefault(key, FormatShortlist()).note_race(json.loads(result["compute_race"]))
        elif spec.kind == BASELINE and result.get("compute"):
            self.computes.setdefault(key, FormatShortlist()).note_choice(result["compute"])

    def note_speed(self, spec: TrialSpec, result: dict[str, Any]) -> None:
        seconds = (result.get("time_finetune_s") or 0.0) + (result.get("time_eval_s") or 0.0)
        if seconds > 0:
            self.speeds.setdefault(spec.model, []).append((1 - spec.rate, seconds / max(spec.epochs, 1)))
            if spec.kind != BASELINE and result.get("time_total_s"):
                self.overheads.setdefault(spec.model, []).append(result["time_total_s"] - seconds)

    def expected_seconds(self, spec: TrialSpec) -> float:
        """A trial's rough cost, to choose which to dispatch. Baselines go first."""
        if spec.kind == BASELINE:
            return math.inf
        overheads = self.overheads.get(spec.model)
        return (estimate_epoch_seconds(self.speeds.get(spec.model, []), 1 - spec.rate) * max(spec.epochs, 1)
                + (statistics.median(overheads) if overheads else 0.0))

    def seconds_left(self) -> list[float]:
        """Expected seconds each running trial still takes (inf for a baseline)."""
        now = time.time()
        return [max(0.0, self.expected_seconds(spec) - (now - submitted))
                for spec, submitted in self.in_flight.values()]

    def next_trial(self, ready: list[TrialSpec], slots: int, *, last_ones: bool) -> int:
        """Index in `ready` of the trial to dispatch: the longest first, and for the
        `last_ones` (nothing else will become ready), the one with which the rest end
        soonest, given how long the running trials still take (pick_next)."""
        estimates = [self.expected_seconds(s) for s in ready]
        longest = max(range(len(ready)), key=estimates.__getitem__)
        if not last_ones or len(ready) > PLAN_AHEAD * slots or math.inf in estimates:
            return longest
        busy = self.seconds_left() + [0.0] * max(0, slots - len(self.in_flight) - 1)  # other free slots
        return longest if math.inf in busy else pick_next(estimates, busy)

    def _save(self, spec: TrialSpec, artifact: bytes) -> Path:
        stem = f"{spec.model}-baseline" if spec.kind == BASELINE else f"{spec.model}-{spec.pruner}-{spec.rate:.2f}"
        path = self.models_dir / f"{stem}-{spec.key}.pt"
        write_atomic(path, artifact)
        return path

    def _log(self, spec: TrialSpec, result: dict[str, Any]) -> None:
        self.bar.update(1)
        self.logged += 1
        done, total = self.logged, self.bar.total
        eta = (time.time() - self.started) / max(done, 1) * (total - done)
        progress = f"[{done}/{total}, ETA {eta / 60:.0f} min]" if done < total else f"[{done}/{total}]"
        if result["status"] == COMPLETED:
            line = (f"done   {spec.label:<28} acc {result['accuracy']:.1%}  "
                    f"params -{result['param_reduction']:.0%}  {result.get('time_total_s', 0):.0f}s "
                    f"on {result.get('worker_host')}"
                    + (f", {result.get('compute')}" if result.get("compute_race") else ""))
        else:
            first_line = (result.get("error") or "").splitlines()[0] if result.get("error") else ""
            line = f"FAILED {spec.label:<28} {first_line}"
            self.failed.append(f"{spec.label}: {first_line}")
        self.bar.write(f"{progress:<20} {line}")

def run_sweep(config: SweepConfig, *, progress: bool = True) -> SweepSummary:
    """Run (or resume) the sweep `config` describes; returns when no trial is left."""
    ray = None
    started = time.time()
    silence_libraries()
    specs = list(expand(config))
    sweep_id = config.sweep_id()
    prepare_inputs(config)

    # Closed before the command ends: its process exits without Python's teardown
    # (sweep_service.cli.main), and SQLite folds its write-ahead log into the file on close.
    with ResultStore(config.database) as store:
        store.begin_sweep(sweep_id=sweep_id, name=config.name, config_json=config.to_json(),
                          dataset=config.dataset, weights=config.weights, versions=library_versions())
        store.add_trials(sweep_id, specs)
        store.reset_unfinished(sweep_id)
        finished = {row["key"]: row for row in store.trials(sweep_id) if row["status"] in (COMPLETED, FAILED)}
        todo = [s for s in specs if s.key not in finished or finished[s.key]["status"] == FAILED]
        skipped = len(specs) - len(todo)
        report_dir = config.output_dir / "report"
        print(f"sweep {sweep_id}: {len(specs)} trials ({len(config.models)} models x "
              f"{len(config.pruners)} pruners x {len(config.rates)} rates + baselines), "
              f"{skipped} already done, {len(todo)} to run; data: {datasets.describe(config.dataset)}, "
              f"weights: {config.weights}", flush=True)
        if not todo:
            return _finish(store, sweep_id, 0, skipped, started, report_dir, [])

        ray = start_ray()
        stopping = threading.Thread(target=ray.shutdown, name="ray-shutdown")
        try:
            # A live bar only on a terminal; in logs (Docker) each result line says the progress.
            bar = tqdm(total=len(todo), desc="trials", unit="trial", dynamic_ncols=True,
                       disable=not (progress and sys.stderr.isatty()))
            dispatcher = _Dispatcher(ray, config, store, sweep_id, bar)
            _run_queue(ray, config, dispatcher, todo, finished, report_dir)
            bar.close()
            # Nothing more runs on the cluster: it stops while the report is drawn.
            stopping.start()
            return _finish(store, sweep_id, dispatcher.ran, skipped, started, report_dir, dispatcher.failed)
        except KeyboardInterrupt:
            store.reset_unfinished(sweep_id)
            store.end_sweep(sweep_id, "interrupted")
            refresh_report(config.database, report_dir, sweep_id)
            raise
        finally:
            if stopping.ident is not None:  # started
                stopping.join()
            else:
                ray.shutdown()

def _run_queue(ray, config: SweepConfig, dispatcher: _Dispatcher, todo: list[TrialSpec],
               finished: dict[str, dict], report_dir: Path) -> None:
    # Baselines finished in an earlier run hand their saved checkpoint to their trials.
    for key, row in finished.items():
        if row["kind"] == BASELINE and row["status"] == COMPLETED:
            path = Path(row["artifact_path"] or "")
            if path.is_file():
                dispatcher.checkpoints[key] = ray.put(path.read_bytes())
    baselines_todo = {s.key for s in todo if s.kind == BASELINE}
    missing = {s.baseline_key for s in todo if s.baseline_key and s.baseline_key not in dispatcher.checkpoints
               and s.baseline_key not in baselines_todo}
    if missing:  # a completed baseline whose checkpoint file is gone: train it again
        extra = [s for s in expand(config) if s.key in missing]
        todo = extra + todo
        dispatcher.bar.total += len(extra)
    # Baselines first, then in the order they finished: each race narrows down the formats
    # that the races before it left.
    completed = [row for row in finished.values() if row["status"] == COMPLETED]
    for row in sorted(completed, key=lambda row: (row["kind"] != BASELINE, row["finished_at"])):
        spec = TrialSpec.from_json(row["spec_json"])
        dispatcher.note_speed(spec, row)
        dispatcher.note_formats(spec, row)
    ready = [s for s in todo if s.kind == BASELINE or s.baseline_key in dispatcher.checkpoints]
    ready_keys = {s.key for s in ready}
    waiting = [s for s in todo if s.key not in ready_keys]
    last_report = time.time()
    report_cost = FIRST_REPORT_COST_S
    report_interval = max(REPORT_INTERVAL_S, report_cost / REPORT_CPU_SHARE)
    waited_since = time.time()
    waiting_for_workers = False
    while ready or waiting or dispatcher.in_flight:
        slots = _slots(ray, config)
        if slots == 0 and not dispatcher.in_flight:
            if time.time() - waited_since > WORKER_WAIT_S:
                raise SweepAborted(f"no Ray node offers {config.resources.cpus} CPU(s) "
                                   f"{'and %s GPU(s) ' % config.resources.gpus if config.resources.gpus else ''}"
                                   f"for a trial after {WORKER_WAIT_S:.0f} s; start workers or lower `resources`")
            if not waiting_for_workers:
                dispatcher.bar.write("waiting for Ray workers to join ...")
                waiting_for_workers = True
            time.sleep(2)
            continue
        waiting_for_workers = False
        while ready and len(dispatcher.in_flight) < max(slots, 1):
            dispatcher.submit(ready.pop(dispatcher.next_trial(ready, max(slots, 1), last_ones=not waiting)))
        if not dispatcher.in_flight:
            break
        # Redrawn while trials run, not between a result and the next submission.
        core_free = (not waiting and len(dispatcher.in_flight) < slots
                     and max(dispatcher.seconds_left(), default=0.0) > report_cost)
        if core_free or time.time() - last_report > report_interval:
            began = time.time()
            refresh_report(config.database, report_dir, dispatcher.sweep_id)
            last_report = time.time()
            report_cost = last_report - began
            report_interval = max(REPORT_INTERVAL_S, report_cost / REPORT_CPU_SHARE)
        spec = dispatcher.wait_one()
        if spec.kind == BASELINE:
            children = [s for s in waiting if s.baseline_key == spec.key]
            waiting = [s for s in waiting if s.baseline_key != spec.key]
            if spec.key in dispatcher.checkpoints:
                ready.extend(children)
            else:
                for child in children:
                    dispatcher.skip(child, f"baseline of {spec.model} failed; trial not run")

def refresh_report(database: Path, report_dir: Path, sweep_id: str) -> Path | None:
    """Rewrite the report; a report problem is logged, never the end of a sweep."""
    from sweep_service.report import write_report

    try:
        return write_report(database, report_dir, sweep_id=sweep_id)
    except Exception as exc:
        print(f"warning: could not write the report in {report_dir}: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return None


def _finish(store: ResultStore, sweep_id: str, ran: int, skipped: int, started: float,
            report_dir: Path, failed: list[str]) -> SweepSummary:
    summary = SweepSummary(sweep_id, store.counts(sweep_id), ran, skipped, time.time() - started,
                           failed=failed)
    store.end_sweep(sweep_id, "finished" if summary.ok else "incomplete")
    summary.report = refresh_report(store.path, report_dir, sweep_id)
    print(f"sweep {sweep_id} finished in {summary.wall_s:.0f} s: ran {ran}, skipped {skipped} already done; "
          + ", ".join(f"{n} {status}" for status, n in summary.counts.items()))
    for line in failed:
        print(f"  failed: {line}")
    print(f"results: {store.path}" + (f"\nreport:  {summary.report}" if summary.report else ""))
    return summary
