"""The coordinator: expands the grid, dispatches trials to Ray, records results.

It is the only writer of its sweep in the results database (it holds the sweep's lock,
sweep_service.coordinator.lock, while it runs). What runs when is the scheduler's decision
(sweep_service.coordinator.scheduler); this module connects it to Ray: it keeps as many
tasks in flight as the cluster's nodes have slots for (so `running` in the database means
running), records each result as it arrives, hands each completed baseline's checkpoint to
its pruned trials, and redraws the report now and then.

Nothing that goes wrong on the coordinator's side loses a result or stops the sweep: a
trial that fails in its own code comes back as a failed result; a trial whose worker died
is retried (`max_retries`); a trial that runs past `trial_timeout_s` is cancelled and
recorded with the phase it was in; a model that cannot be saved (a full disk) fails its
trial with the reason and keeps its figures. A stop (SIGINT or SIGTERM,
sweep_service.coordinator.stopping) or a crash leaves the sweep `interrupted` and its
unfinished trials `pending`, ready to resume. In an adaptive sweep, rung results,
their checkpoints and the search's decisions are kept by sweep_service.coordinator.rungs.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from tqdm import tqdm

from model_zoo import WeightsUnavailableError
from model_zoo._registry import fetch_imagenet_weights
from sweep_service.coordinator import measurement, stopping
from sweep_service.coordinator.cluster import (
    NO_TRIAL_RUNTIME_ENV,
    describe_nodes,
    joined_cluster,
    live_nodes,
    start_ray,
)
from sweep_service.coordinator.config import SweepConfig
from sweep_service.coordinator.grid import expand
from sweep_service.coordinator.lock import STALE_AFTER_S, SweepLock
from sweep_service.coordinator.rungs import RungKeeper, build_search
from sweep_service.coordinator.scheduler import (
    PROBE,
    FormatProbe,
    Request,
    Scheduler,
    Task,
    completed_in_order,
    describe_request,
    node_slots,
    unplaceable,
)
from sweep_service.coordinator.search import ADD, SKIP, STOP, RungRun
from sweep_service.coordinator.store import ResultStore
from sweep_service.coordinator.variants import artifact_stem, missing_variants, save_variants
from sweep_service.files import write_atomic
from sweep_service.plugins import plugins_dir
from sweep_service.provenance import describe_commit, folder_digest, library_versions, source_commit
from sweep_service.quiet import silence_libraries
from sweep_service.report.status import StatusFile
from sweep_service.spec import BASELINE, COMPLETED, FAILED, TrialSpec
from sweep_service.worker import data as datasets
from sweep_service.worker.compute import AUTO
from sweep_service.worker.progress import TrialPhases
from sweep_service.worker.trial import measure_formats, run_on_worker

# The report is redrawn after a result at most this often while trials run (it shares the
# cores with them), and once at the end.
REPORT_INTERVAL_S = 60.0
# On a stop, the report is redrawn only if its last drawing took less than this: a stop must
# end within the 10 s that `docker stop` and Compose give before they kill the process.
STOP_REPORT_S = 3.0
POLL_S = 2.0


class SweepAborted(RuntimeError):
    """The sweep cannot go on (data or weights missing, no Ray node can hold a trial...)."""

    exit_code = 1


class SetupError(SweepAborted):
    """The config cannot run here (its output folder cannot be written, or no node of this
    machine's cluster can hold a trial): found before anything is recorded."""

    exit_code = 2


@dataclass
class SweepSummary:
    sweep_id: str
    counts: dict[str, int]
    ran: int
    skipped: int
    wall_s: float
    report: Path | None = None
    failed: list[str] = field(default_factory=list)
    measured: measurement.StageResult | None = None

    @property
    def ok(self) -> bool:
        # Failed trials are results, not errors; the sweep is fine if nothing is left over.
        return self.counts.get("pending", 0) == 0 and self.counts.get("running", 0) == 0


def prepare_inputs(config: SweepConfig) -> Path:
    """Fail before Ray starts if the data set or the pretrained weights cannot be had;
    returns the folder of the data set's files."""
    try:
        root = datasets.prepare(config.dataset, config.data_root)
    except datasets.DatasetUnavailableError as exc:
        raise SweepAborted(str(exc)) from None
    except OSError as exc:
        raise SetupError(f"cannot use the data folder {config.data_root}: {exc}") from None
    if config.weights == "imagenet":
        for model in config.models:
            try:
                fetch_imagenet_weights(model, config.weights_dir)
            except WeightsUnavailableError as exc:
                raise SweepAborted(str(exc)) from None
            except OSError as exc:
                raise SetupError(f"cannot use the weights folder {config.weights_dir}: {exc}") from None
    return root / datasets.CIFAR_DIR


def sweep_provenance(data_folder: Path, earlier: dict[str, Any]) -> dict[str, Any]:
    """This run's git commit and data set hash, with those of the sweep's earlier runs
    where they differ (a resumed sweep whose code or data changed says so)."""
    data = folder_digest(data_folder)
    found: dict[str, Any] = {**source_commit(), "data_sha256": data["sha256"], "data_files": data["files"],
                             "data_bytes": data["bytes"]}
    for now, history in (("data_sha256", "earlier_data_sha256"), ("git_commit", "earlier_git_commits")):
        seen = [x for x in [*earlier.get(history, []), earlier.get(now)] if x and x != found[now]]
        found[history] = list(dict.fromkeys(seen))
    return found


def check_output_dir(output_dir: Path) -> None:
    """The folder for models and the report must be writable before any trial runs."""
    try:
        (output_dir / "models").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SetupError(f"cannot create the output folder {output_dir / 'models'}: {exc.strerror or exc}; "
                         "set `output_dir` (or --out) to a writable folder") from None
    if not os.access(output_dir / "models", os.W_OK | os.X_OK):
        raise SetupError(f"the output folder {output_dir} is not writable; set `output_dir` (or --out) "
                         "to a writable folder")


def check_local_cluster(ray, scheduler: Scheduler) -> None:
    """On this machine's own cluster, which cannot grow, a request that no node can hold is
    an error at once."""
    nodes = live_nodes(ray)
    waiting = unplaceable(scheduler.unfinished(), [node["Resources"] for node in nodes])
    if waiting:
        raise SetupError(f"no trial can run on this machine: {_what_waits(waiting)}, and the local Ray "
                         f"cluster offers {describe_nodes(nodes)}. Lower `resources` in the config, or "
                         "join a larger cluster with RAY_ADDRESS")


def _what_waits(waiting: dict[Request, list[Task]]) -> str:
    parts = []
    for request, tasks in waiting.items():
        labels = ", ".join(t.label for t in tasks[:3]) + (", ..." if len(tasks) > 3 else "")
        parts.append(f"{len(tasks)} trial(s) ({labels}) ask for {describe_request(request)} on one node")
    return "; ".join(parts)


class Report:
    """The sweep's report folder: redrawn from the database, timed, announced in status.json."""

    def __init__(self, database: Path, folder: Path, sweep_id: str, status: StatusFile):
        self.database, self.folder, self.sweep_id, self.status = database, folder, sweep_id, status
        self.seconds: float | None = None  # how long the last drawing took

    def draw(self) -> Path | None:
        """Rewrite the report; a report problem is logged, never the end of a sweep."""
        from sweep_service.report import write_report

        started, drawn_at = time.perf_counter(), time.time()
        try:
            index = write_report(self.database, self.folder, sweep_id=self.sweep_id)
        except Exception as exc:
            print(f"warning: could not write the report in {self.folder}: {type(exc).__name__}: {exc}",
                  file=sys.stderr)
            return None
        self.seconds = time.perf_counter() - started
        # Before the page was rendered: an open page reloads when this is newer than itself.
        self.status.write(report_unix=drawn_at)
        return index

    @property
    def quick(self) -> bool:
        return self.seconds is not None and self.seconds < STOP_REPORT_S


class Dispatcher:
    """Runs the scheduler's tasks on Ray and records what comes back."""

    def __init__(self, ray, config: SweepConfig, store: ResultStore, sweep_id: str, scheduler: Scheduler,
                 bar: tqdm, lock: SweepLock, report: Report):
        self.ray = ray
        self.config = config
        self.store = store
        self.sweep_id = sweep_id
        self.scheduler = scheduler
        self.bar = bar
        self.several_seeds = len(config.run_seeds) > 1
        self.lock = lock
        self.report = report
        resources = dict(num_cpus=config.resources.cpus, num_gpus=config.resources.gpus, max_retries=0)
        self.trial_task = ray.remote(run_on_worker).options(**resources, retry_exceptions=False)
        self.probe_task = ray.remote(measure_formats).options(**resources)
        # On the coordinator's node, without CPUs: it must not take a trial's slot.
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self.phases = ray.remote(TrialPhases).options(num_cpus=0, scheduling_strategy=here,
                                                      runtime_env=NO_TRIAL_RUNTIME_ENV).remote()
        self.in_flight: dict[Any, Task] = {}  # ObjectRef -> task
        self.submitted: dict[str, float] = {}  # task key -> when it was submitted
        self.checkpoints: dict[str, Any] = {}  # baseline key -> ObjectRef of its state_dict bytes
        self.rungs = RungKeeper(store, sweep_id, config.output_dir) if scheduler.search is not None else None
        self.failed: list[str] = []
        self.ran = 0
        self.logged = 0
        self.started = time.time()
        self.models_dir = config.output_dir / "models"

    def run(self) -> None:
        last_report, drawn_after = time.time(), 0  # when the report was drawn, and after how many results
        waiting_since = None
        cpus, gpus = self.config.resources.cpus, self.config.resources.gpus
        while not self.scheduler.finished:
            if self.lock.lost.is_set():
                raise SweepAborted(f"another coordinator took over sweep {self.sweep_id} (this one could not "
                                   "refresh its lock in time); this one stops and leaves the sweep to it")
            if self.cancel_overdue():
                continue
            nodes = live_nodes(self.ray)
            slots = sum(node_slots(node["Resources"], cpus, gpus) for node in nodes)
            if slots == 0 and not self.in_flight:
                waiting_since = self.wait_for_nodes(nodes, waiting_since)
                time.sleep(POLL_S)
                continue
            waiting_since = None
            for task in self.scheduler.next(slots - len(self.in_flight), time.time()):
                self.submit(task)
            self.apply_decisions()
            if not self.in_flight:
                raise SweepAborted("no trial can start: the scheduler is waiting for nothing that runs "
                                   "(this is a bug; run the sweep again to resume)")
            # Redrawn once the free slots have their next trials, so that no slot waits for it.
            if self.ran > drawn_after and time.time() - last_report > REPORT_INTERVAL_S:
                self.report.draw()
                last_report, drawn_after = time.time(), self.ran
            done, _ = self.ray.wait(list(self.in_flight), num_returns=1, timeout=POLL_S)
            for ref in done:
                with stopping.deferred():  # a result that came back is recorded whole
                    self.collect(ref)

    def wait_for_nodes(self, nodes: list[dict], since: float | None) -> float:
        """No node can hold a trial now: say which trials wait for what, and give up after
        `node_wait_s` (workers may still be joining a cluster, or an autoscaler adding one).
        This machine's own cluster cannot grow: there, give up at once."""
        waiting = unplaceable(self.scheduler.unfinished(), [node["Resources"] for node in nodes])
        what = _what_waits(waiting) or "the trials wait for a node"
        if not joined_cluster():  # checked at the start: the machine's own node has gone
            raise SweepAborted(f"the local Ray cluster lost its node: {what}, and it offers {describe_nodes(nodes)}; "
                               "run the sweep again to resume")
        if since is None:
            self.bar.write(f"waiting for Ray nodes: {what}; the cluster offers {describe_nodes(nodes)} "
                           f"(giving up after {self.config.node_wait_s:.0f} s, `node_wait_s`)")
            return time.time()
        if time.time() - since > self.config.node_wait_s:
            raise SweepAborted(f"no Ray node could hold a trial for {self.config.node_wait_s:.0f} s: {what}; the "
                               f"cluster offers {describe_nodes(nodes)}. Start workers with enough resources or "
                               "lower `resources`, then run the sweep again to resume")
        return since

    def submit(self, task: Task) -> None:
        self.phases.forget.remote(task.key)
        if task.kind == PROBE:
            ref = self.probe_task.remote(task.spec)
        else:
            spec, rung = (task.spec, task) if isinstance(task, RungRun) else (task, None)
            resume = self.rungs.resume_from(rung) if rung else None
            checkpoint = self.checkpoints.get(task.baseline_key) if task.baseline_key and not resume else None
            ref = self.trial_task.remote(spec, [checkpoint] if checkpoint else [], str(plugins_dir()),
                                         self.scheduler.formats[task.model] if self.scheduler.formats is not None
                                         else spec.compute, self.phases, rung.budget if rung else 1.0,
                                         (self.ray.put(resume),) if resume else ())
            self.store.mark_running(self.sweep_id, task.key)
        self.in_flight[ref] = task
        self.submitted[task.key] = time.time()

    def cancel_overdue(self) -> bool:
        """Cancel the tasks that ran past `trial_timeout_s` and record why; True if any."""
        overdue = {task.key for task in self.scheduler.overdue(time.time())}
        for ref, task in [(ref, task) for ref, task in self.in_flight.items() if task.key in overdue]:
            phase = self._phase_of(task)
            self.ray.cancel(ref, force=True)
            del self.in_flight[ref]
            reason = (f"timeout after {self.config.trial_timeout_s:.0f} s in phase {phase} (`trial_timeout_s`); "
                      "the trial was cancelled")
            with stopping.deferred():
                if task.kind == PROBE:
                    self._probe_done(task, None, reason)
                else:
                    self._record(task, {"status": FAILED, "error": reason})
        return bool(overdue)

    def _phase_of(self, task: Task) -> str:
        if task.kind == PROBE:
            return "probe"
        try:
            phase = self.ray.get(self.phases.phase.remote(task.key), timeout=5)
        except Exception:  # the phase is only for the message: the cancel goes ahead
            return "unknown"
        return phase or "waiting for a worker"

    def collect(self, ref) -> None:
        task = self.in_flight.pop(ref)
        try:
            output = self.ray.get(ref)
        except Exception as exc:  # the worker died: a trial's own errors come back as results
            if self.scheduler.lost(task):
                self.bar.write(f"retry  {self._label(task):<28} its worker was lost ({type(exc).__name__})")
                return
            output = None
            lost = f"worker lost: {type(exc).__name__}: {exc}"
        if task.kind == PROBE:
            self._probe_done(task, output, "worker lost")
            return
        if output is None:
            self._record(task, {"status": FAILED, "error": lost})
            return
        result, artifact = output.result, output.artifact
        result["time_wait_s"] = max(0.0, output.started_at - self.submitted[task.key])
        spec = task.spec if isinstance(task, RungRun) else task
        if result["status"] == COMPLETED and artifact is not None:
            path = self._model_path(spec)
            try:
                write_atomic(path, artifact)
            except OSError as exc:
                result.update(status=FAILED, error=f"saving the model to {path} failed: {exc.strerror or exc}; the "
                                                   "trial's figures are kept, its model is not (free space there, "
                                                   "or set `output_dir`, and run the sweep again)")
            else:
                result["artifact_path"] = str(path)
                if task.kind == BASELINE:
                    self.checkpoints[task.key] = self.ray.put(artifact)
        if output.variants and result["status"] == COMPLETED:  # a trial whose model was not saved ships nothing
            try:
                save_variants(self.store, self.sweep_id, spec, output.variants, self.models_dir)
            except OSError as exc:
                result.update(status=FAILED, error=f"saving the variants in {self.models_dir} failed: "
                                                   f"{exc.strerror or exc}; free space there, or set "
                                                   "`output_dir`, and run the sweep again")
        self._record(task, result, output.rung_checkpoint)

    def _record(self, task: Task, result: dict[str, Any], rung_checkpoint: Any = None) -> None:
        """Store a trial's end (or a rung's result), tell the scheduler, and record the
        trials it leaves unrun."""
        waits = False
        if isinstance(task, RungRun):
            waits = self.rungs.record(task, result, rung_checkpoint)
        else:
            self.store.record(self.sweep_id, task.key, result)
        self.store.link_baselines(self.sweep_id)
        self.ran += 1
        self._log(task, result, final=not waits)
        for not_run in self.scheduler.trial_done(task, result["status"], result):
            self.record_not_run(not_run.spec, not_run.reason)
        self.apply_decisions()

    def apply_decisions(self) -> None:
        """Record and log what the adaptive search decided (nothing without one)."""
        for decision in self.scheduler.decisions():
            line = self.rungs.apply(decision)
            if line is None:
                continue
            if decision.action == ADD:
                self.bar.total += 1
            self._log_line(line, counts=decision.action in (STOP, SKIP))

    def _probe_done(self, probe: FormatProbe, timings: dict[str, float] | None, why_not: str) -> None:
        if timings:
            fastest = next(iter(timings))
            detail = ", ".join(f"{name} {seconds * 1000:.0f} ms" for name, seconds in timings.items())
        else:  # it could not measure: train in the format every device has
            fastest, timings, detail = "fp32", {}, f"not measured ({why_not}), using fp32"
        self.store.set_format(self.sweep_id, probe.model, fastest, timings)
        self.scheduler.probe_done(probe, fastest)
        self.bar.write(f"probed {probe.model:<28} trains in {fastest} (per step: {detail})")

    def record_not_run(self, spec: TrialSpec, reason: str) -> None:
        """Record `spec` as failed without running it."""
        result = {"status": FAILED, "error": reason}
        self.store.record(self.sweep_id, spec.key, result)
        self._log(spec, result)

    def _model_path(self, spec: TrialSpec) -> Path:
        return self.models_dir / f"{artifact_stem(spec)}.pt"

    def _label(self, task: Task) -> str:
        if not self.several_seeds or task.kind == PROBE:
            return task.label
        seed = (task.spec if isinstance(task, RungRun) else task).seed
        return f"{task.label} seed {seed}"

    def _log(self, spec: Task, result: dict[str, Any], final: bool = True) -> None:
        """Log a result; `final`: it ends its trial (a rung that waits for a decision does not)."""
        if result["status"] == COMPLETED:
            line = (f"{'done' if final else 'rung':<6} {self._label(spec):<28} acc {result['accuracy']:.1%}  "
                    f"params -{result['param_reduction']:.0%}  {result.get('time_total_s', 0):.0f}s "
                    f"on {result.get('worker_host')}")
        else:
            first_line = (result.get("error") or "").splitlines()[0] if result.get("error") else ""
            line = f"FAILED {self._label(spec):<28} {first_line}"
            self.failed.append(f"{self._label(spec)}: {first_line}")
        self._log_line(line, counts=final)

    def _log_line(self, line: str, counts: bool) -> None:
        """Write a line with the progress; `counts`: it ends a trial."""
        if counts:
            self.bar.update(1)
            self.logged += 1
        done, total = self.logged, self.bar.total
        eta = (time.time() - self.started) / max(done, 1) * (total - done)
        progress = f"[{done}/{total}, ETA {eta / 60:.0f} min]" if done < total else f"[{done}/{total}]"
        self.bar.write(f"{progress:<20} {line}")


def run_sweep(config: SweepConfig, *, progress: bool = True) -> SweepSummary:
    """Run (or resume) the sweep `config` describes; returns when no trial is left.

    Raises StoreError (the database cannot be used), SweepLocked (another coordinator runs
    the sweep), SweepAborted (it cannot go on; SetupError if found before anything was
    recorded), and stopping.Stopped on SIGINT or SIGTERM, after leaving the sweep
    `interrupted`.
    """
    started = time.time()
    silence_libraries()
    specs = list(expand(config))
    sweep_id = config.sweep_id()
    check_output_dir(config.output_dir)
    try:
        measurement.check_reachable(config.measure.on)
    except measurement.MeasurementUnavailable as exc:
        raise SetupError(str(exc)) from None
    with ResultStore(config.database) as store:
        status = StatusFile(config.output_dir / "report", sweep_id, stale_after_s=STALE_AFTER_S)
        with SweepLock(store, sweep_id, on_beat=status.write) as lock:
            if lock.taken_over:
                holder, reason = lock.taken_over
                print(f"taking over sweep {sweep_id} from a coordinator that stopped ({reason}): pid {holder.pid} "
                      f"on host {holder.host}", flush=True)
            status.write(status="running")
            try:
                data_folder = prepare_inputs(config)
            except BaseException as exc:
                stop = stopping.stop_behind(exc)
                status.write(status="interrupted" if stop else "failed", message=_why(exc))
                if stop:
                    raise stop from None
                raise
            return _run_locked(config, store, lock, status, specs, sweep_id, started, progress, data_folder)


def _run_locked(config: SweepConfig, store: ResultStore, lock: SweepLock, status: StatusFile,
                                specs: list[TrialSpec], sweep_id: str, started: float, progress: bool,
                data_folder: Path) -> SweepSummary:
    try:
        earlier = json.loads(store.sweep(sweep_id).get("provenance_json") or "{}")
    except LookupError:
        earlier = {}
    provenance = sweep_provenance(data_folder, earlier)
    if provenance["data_sha256"] != earlier.get("data_sha256", provenance["data_sha256"]):
        print(f"warning: the data set's files in {data_folder} differ from those this sweep's earlier "
              "trials used (sha256 recorded in the report); its trials are no longer all comparable",
              file=sys.stderr)
    rows = {row["key"]: row for row in store.trials(sweep_id)}
    # A grid sweep trains in full what an adaptive run stopped short.
    completed = {key for key, row in rows.items() if row["status"] == COMPLETED
                 and (config.search == "adaptive" or (row["budget"] or 1.0) >= 1.0)}
    checkpoints = {key: Path(rows[key]["artifact_path"] or "") for key in completed
                   if rows[key]["kind"] == BASELINE}
    checkpoints = {key: path for key, path in checkpoints.items() if path.is_file()}
    formats = None
    if config.compute == AUTO:
        formats = {model: known["format"] for model, known in store.formats(sweep_id).items()}
    search = build_search(config, specs, store, sweep_id, rows) if config.search == "adaptive" else None
    scheduler = Scheduler(specs, done=completed, checkpoints=set(checkpoints), formats=formats,
                          max_retries=config.max_retries, search=search, time_limit_s=config.trial_timeout_s)
    for row in completed_in_order(rows.values()):
        scheduler.note_times(TrialSpec.from_json(row["spec_json"]), row)
    todo = len(scheduler.todo)
    skipped = len(scheduler.specs) - todo
    report = Report(config.database, config.output_dir / "report", sweep_id, status)
    seeds = len(config.run_seeds)
    print(f"sweep {sweep_id}: {len(scheduler.specs)} trials ({len(config.models)} models x "
          f"{len(config.pruners)} pruners x {len(config.rates)} rates"
          + (f" x {seeds} seeds" if seeds > 1 else "") + " + baselines), "
          f"{skipped} already done, {todo} to run; data: {datasets.describe(config.dataset)}, "
          f"weights: {config.weights}; code: {describe_commit(provenance)}; "
          f"search: {_search_text(config)}", flush=True)

    def begin() -> None:
        store.begin_sweep(sweep_id=sweep_id, name=config.name, config_json=config.to_json(),
                          dataset=config.dataset, weights=config.weights, versions=library_versions(),
                          provenance=provenance)
        store.add_trials(sweep_id, specs)
        store.reset_unfinished(sweep_id)
        if search is not None:  # what the search concludes from earlier runs' results
            keeper = RungKeeper(store, sweep_id, config.output_dir)
            for line in filter(None, map(keeper.apply, scheduler.decisions())):
                print(line)

    if scheduler.finished and not (missing_variants(store, sweep_id, specs)
                                   or measurement.needs_measuring(store, sweep_id)):
        begin()
        return _finish(store, sweep_id, 0, skipped, started, report, [])

    ray, begun, dispatcher, bar = None, False, None, None
    try:
        if joined_cluster():  # joining starts no process here: a stop may cut it short
            try:
                ray = start_ray()
            except ConnectionError as exc:
                raise SweepAborted(f"cannot join the Ray cluster at RAY_ADDRESS={os.environ.get('RAY_ADDRESS')}: "
                                   f"{exc}; start the cluster first, or unset RAY_ADDRESS to run on this "
                                   "machine alone") from None
        else:
            with stopping.deferred():  # Ray stopped while it starts its processes leaves them behind
                ray = start_ray()
        stopping.reinstall()
        if not joined_cluster():
            check_local_cluster(ray, scheduler)
        begin()
        begun = True
        # A live bar only on a terminal; in logs (Docker) each result line says the progress.
        bar = tqdm(total=todo, desc="trials", unit="trial", dynamic_ncols=True,
                   disable=not (progress and sys.stderr.isatty()))
        dispatcher = Dispatcher(ray, config, store, sweep_id, scheduler, bar, lock, report)
        # Baselines finished in an earlier run hand their saved checkpoint to their trials.
        for key, path in checkpoints.items():
            dispatcher.checkpoints[key] = ray.put(path.read_bytes())
        dispatcher.run()
        bar.close()
        stage = measurement.after_trials(ray, config, store, sweep_id, specs, wait_s=config.node_wait_s, log=print)
    except BaseException as exc:
        stopping.ignore()  # stopping already: a second Ctrl-C must not cut the clean-up short
        if bar is not None:
            bar.close()
        if ray is not None:
            ray.shutdown()
            ray = None
        _interrupted(store, lock, status, report, sweep_id, exc, begun)
        stop = stopping.stop_behind(exc)
        if stop:
            raise stop from None
        raise
    finally:
        if ray is not None:
            ray.shutdown()
    return _finish(store, sweep_id, dispatcher.ran, skipped, started, report, dispatcher.failed, stage)


def _search_text(config: SweepConfig) -> str:
    if config.search == "grid":
        return "grid (every trial in full)"
    a = config.adaptive
    floors = [f"min_accuracy {a.min_accuracy:.1%}" if a.min_accuracy is not None else "",
              f"max_drop {a.max_drop:.1%}" if a.max_drop is not None else ""]
    rungs = ", ".join(f"{r:.0%}" for r in a.rungs) or "none"
    return (f"adaptive (floor: {' and '.join(f for f in floors if f) or 'chance + noise'}; "
            f"rungs at {rungs} of the fine-tune; front: accuracy vs {a.front}{'; refine' if a.refine else ''})")


def _interrupted(store: ResultStore, lock: SweepLock, status: StatusFile, report: Report, sweep_id: str,
                 exc: BaseException, begun: bool) -> None:
    """Leave the sweep resumable after a stop or an error: unfinished trials `pending`, the
    sweep `interrupted` (unless another coordinator took it over, or it had not begun)."""
    if lock.lost.is_set():
        return
    stop = stopping.stop_behind(exc) is not None
    message = _why(exc)
    if not begun:
        status.write(status="interrupted" if stop else "failed", message=message)
        return
    try:
        store.reset_unfinished(sweep_id)
        store.end_sweep(sweep_id, "interrupted")
    except Exception as problem:  # e.g. the database's disk is full: the next run resets them
        print(f"warning: could not mark sweep {sweep_id} interrupted: {problem}", file=sys.stderr)
    status.write(status="interrupted", message=message)
    if report.quick:  # else the next run, or the `report` command, redraws it
        report.draw()


def _why(exc: BaseException) -> str:
    """How a run ended early, for status.json."""
    stop = stopping.stop_behind(exc)
    if stop:
        return f"stopped by {stop}"
    return str(exc) if isinstance(exc, SweepAborted) else f"{type(exc).__name__}: {exc}"


def _finish(store: ResultStore, sweep_id: str, ran: int, skipped: int, started: float,
            report: Report, failed: list[str], stage: measurement.StageResult | None = None) -> SweepSummary:
    summary = SweepSummary(sweep_id, store.counts(sweep_id), ran, skipped, time.time() - started,
                           failed=failed, measured=stage)
    final = "finished" if summary.ok else "incomplete"
    store.end_sweep(sweep_id, final)
    summary.report = report.draw()
    report.status.write(status=final)
    print(f"sweep {sweep_id} finished in {summary.wall_s:.0f} s: ran {ran}, {skipped} already done; "
          + ", ".join(f"{n} {status}" for status, n in summary.counts.items()))
    if stage is not None:
        print(f"  the measurement stage took {stage.seconds:.1f} s, {stage.seconds / summary.wall_s:.1%} of "
              "the sweep's wall time")
    for line in failed:
        print(f"  failed: {line}")
    print(f"results: {store.path}" + (f"\nreport:  {summary.report}" if summary.report else ""))
    return summary
