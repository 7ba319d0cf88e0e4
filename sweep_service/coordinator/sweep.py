"""The coordinator: expands the grid, dispatches trials to Ray, records results.

It is the only writer of the results database. What runs when is the scheduler's
decision (sweep_service.coordinator.scheduler); this module connects it to Ray: it keeps
as many tasks in flight as the cluster's nodes have slots for (so `running` in the
database means running), records each result as it arrives, hands each completed
baseline's checkpoint to its pruned trials, and redraws the report now and then. A trial
that fails in its own code comes back as a failed result and the sweep goes on; a trial
whose worker died is retried (`max_retries`).
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from model_zoo import WeightsUnavailableError
from model_zoo._registry import fetch_imagenet_weights
from sweep_service.coordinator.cluster import cluster_slots, start_ray
from sweep_service.coordinator.config import SweepConfig
from sweep_service.coordinator.grid import expand
from sweep_service.coordinator.scheduler import PROBE, FormatProbe, Scheduler, Task, completed_in_order
from sweep_service.coordinator.store import ResultStore
from sweep_service.files import write_atomic
from sweep_service.plugins import plugins_dir
from sweep_service.provenance import describe_commit, folder_digest, library_versions, source_commit
from sweep_service.quiet import silence_libraries
from sweep_service.spec import BASELINE, COMPLETED, FAILED, TrialSpec
from sweep_service.worker import data as datasets
from sweep_service.worker.compute import AUTO
from sweep_service.worker.trial import measure_formats, run_on_worker

# The report is redrawn after a result at most this often while trials run (it shares the
# cores with them), and once at the end.
REPORT_INTERVAL_S = 60.0
# How long to wait for a cluster without room for a trial to gain a node that has it.
WORKER_WAIT_S = 600.0
POLL_S = 2.0


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


def prepare_inputs(config: SweepConfig) -> Path:
    """Fail before Ray starts if the data set or the pretrained weights cannot be had;
    returns the folder of the data set's files."""
    try:
        root = datasets.prepare(config.dataset, config.data_root)
    except datasets.DatasetUnavailableError as exc:
        raise SweepAborted(str(exc)) from None
    if config.weights == "imagenet":
        for model in config.models:
            try:
                fetch_imagenet_weights(model, config.weights_dir)
            except WeightsUnavailableError as exc:
                raise SweepAborted(str(exc)) from None
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


class Dispatcher:
    """Runs the scheduler's tasks on Ray and records what comes back."""

    def __init__(self, ray, config: SweepConfig, store: ResultStore, sweep_id: str, scheduler: Scheduler,
                 bar: tqdm):
        self.ray = ray
        self.config = config
        self.store = store
        self.sweep_id = sweep_id
        self.scheduler = scheduler
        self.bar = bar
        self.several_seeds = len(config.run_seeds) > 1
        resources = dict(num_cpus=config.resources.cpus, num_gpus=config.resources.gpus, max_retries=0)
        self.trial_task = ray.remote(run_on_worker).options(**resources, retry_exceptions=False)
        self.probe_task = ray.remote(measure_formats).options(**resources)
        self.in_flight: dict[Any, tuple[Task, float]] = {}  # ObjectRef -> (task, submitted at)
        self.checkpoints: dict[str, Any] = {}  # baseline key -> ObjectRef of its state_dict bytes
        self.failed: list[str] = []
        self.ran = 0
        self.logged = 0
        self.started = time.time()
        self.models_dir = config.output_dir / "models"
        self.models_dir.mkdir(parents=True, exist_ok=True)

    def run(self, report_dir: Path) -> None:
        last_report = time.time()
        waited_since = None
        while not self.scheduler.finished:
            slots = cluster_slots(self.ray, self.config.resources.cpus, self.config.resources.gpus)
            if slots == 0 and not self.in_flight:
                if waited_since is None:
                    waited_since = time.time()
                    self.bar.write("waiting for Ray workers to join ...")
                elif time.time() - waited_since > WORKER_WAIT_S:
                    gpus = f"and {self.config.resources.gpus} GPU(s) " if self.config.resources.gpus else ""
                    raise SweepAborted(f"no Ray node offers {self.config.resources.cpus} CPU(s) {gpus}for a "
                                       f"trial after {WORKER_WAIT_S:.0f} s; start workers or lower `resources`")
                time.sleep(POLL_S)
                continue
            waited_since = None
            for task in self.scheduler.next(slots - len(self.in_flight), time.time()):
                self.submit(task)
            if not self.in_flight:
                raise SweepAborted("no trial can start: the scheduler is waiting for nothing that runs "
                                   "(this is a bug; run the sweep again to resume)")
            done, _ = self.ray.wait(list(self.in_flight), num_returns=1, timeout=POLL_S)
            for ref in done:
                self.collect(ref)
                if time.time() - last_report > REPORT_INTERVAL_S:
                    refresh_report(self.config.database, report_dir, self.sweep_id)
                    last_report = time.time()

    def submit(self, task: Task) -> None:
        if task.kind == PROBE:
            ref = self.probe_task.remote(task.spec)
        else:
            checkpoint = self.checkpoints.get(task.baseline_key) if task.baseline_key else None
            ref = self.trial_task.remote(task, [checkpoint] if checkpoint else [], str(plugins_dir()),
                                         self.scheduler.formats[task.model] if self.scheduler.formats is not None
                                         else task.compute)
            self.store.mark_running(self.sweep_id, task.key)
        self.in_flight[ref] = (task, time.time())

    def collect(self, ref) -> None:
        task, submitted = self.in_flight.pop(ref)
        try:
            output = self.ray.get(ref)
        except Exception as exc:  # the worker died: a trial's own errors come back as results
            if self.scheduler.lost(task):
                self.bar.write(f"retry  {self._label(task):<28} its worker was lost ({type(exc).__name__})")
                return
            output = None
            lost = f"worker lost: {type(exc).__name__}: {exc}"
        if task.kind == PROBE:
            self._probe_done(task, output)
            return
        if output is None:
            result, artifact = {"status": FAILED, "error": lost}, None
        else:
            result, artifact = output.result, output.artifact
            result["time_wait_s"] = max(0.0, output.started_at - submitted)
        if result["status"] == COMPLETED and artifact is not None:
            result["artifact_path"] = str(self._save(task, artifact))
            if task.kind == BASELINE:
                self.checkpoints[task.key] = self.ray.put(artifact)
        self.store.record(self.sweep_id, task.key, result)
        self.store.link_baselines(self.sweep_id)
        self.ran += 1
        self._log(task, result)
        for not_run in self.scheduler.trial_done(task, result["status"], result):
            self.skip(not_run.spec, not_run.reason)

    def _probe_done(self, probe: FormatProbe, timings: dict[str, float] | None) -> None:
        if timings:
            fastest = next(iter(timings))
            detail = ", ".join(f"{name} {seconds * 1000:.0f} ms" for name, seconds in timings.items())
        else:  # its worker died on every try: train in the format every device has
            fastest, timings, detail = "fp32", {}, "not measured (worker lost), using fp32"
        self.store.set_format(self.sweep_id, probe.model, fastest, timings)
        self.scheduler.probe_done(probe, fastest)
        self.bar.write(f"probed {probe.model:<28} trains in {fastest} (per step: {detail})")

    def skip(self, spec: TrialSpec, reason: str) -> None:
        """Record `spec` as failed without running it."""
        result = {"status": FAILED, "error": reason}
        self.store.record(self.sweep_id, spec.key, result)
        self._log(spec, result)

    def _save(self, spec: TrialSpec, artifact: bytes) -> Path:
        stem = f"{spec.model}-baseline" if spec.kind == BASELINE else f"{spec.model}-{spec.pruner}-{spec.rate:g}"
        path = self.models_dir / f"{stem}-seed{spec.seed}-{spec.key}.pt"
        write_atomic(path, artifact)
        return path

    def _label(self, task: Task) -> str:
        return f"{task.label} seed {task.seed}" if self.several_seeds and task.kind != PROBE else task.label

    def _log(self, spec: TrialSpec, result: dict[str, Any]) -> None:
        self.bar.update(1)
        self.logged += 1
        done, total = self.logged, self.bar.total
        eta = (time.time() - self.started) / max(done, 1) * (total - done)
        progress = f"[{done}/{total}, ETA {eta / 60:.0f} min]" if done < total else f"[{done}/{total}]"
        if result["status"] == COMPLETED:
            line = (f"done   {self._label(spec):<28} acc {result['accuracy']:.1%}  "
                    f"params -{result['param_reduction']:.0%}  {result.get('time_total_s', 0):.0f}s "
                    f"on {result.get('worker_host')}")
        else:
            first_line = (result.get("error") or "").splitlines()[0] if result.get("error") else ""
            line = f"FAILED {self._label(spec):<28} {first_line}"
            self.failed.append(f"{self._label(spec)}: {first_line}")
        self.bar.write(f"{progress:<20} {line}")


def run_sweep(config: SweepConfig, *, progress: bool = True) -> SweepSummary:
    """Run (or resume) the sweep `config` describes; returns when no trial is left."""
    started = time.time()
    silence_libraries()
    specs = list(expand(config))
    sweep_id = config.sweep_id()
    data_folder = prepare_inputs(config)

    with ResultStore(config.database) as store:
        try:
            earlier = json.loads(store.sweep(sweep_id).get("provenance_json") or "{}")
        except LookupError:
            earlier = {}
        provenance = sweep_provenance(data_folder, earlier)
        if provenance["data_sha256"] != earlier.get("data_sha256", provenance["data_sha256"]):
            print(f"warning: the data set's files in {data_folder} differ from those this sweep's earlier "
                  "trials used (sha256 recorded in the report); its trials are no longer all comparable",
                  file=sys.stderr)
        store.begin_sweep(sweep_id=sweep_id, name=config.name, config_json=config.to_json(),
                          dataset=config.dataset, weights=config.weights, versions=library_versions(),
                          provenance=provenance)
        store.add_trials(sweep_id, specs)
        store.reset_unfinished(sweep_id)
        rows = {row["key"]: row for row in store.trials(sweep_id)}
        completed = {key for key, row in rows.items() if row["status"] == COMPLETED}
        checkpoints = {key: Path(rows[key]["artifact_path"] or "") for key in completed
                       if rows[key]["kind"] == BASELINE}
        checkpoints = {key: path for key, path in checkpoints.items() if path.is_file()}
        formats = None
        if config.compute == AUTO:
            formats = {model: known["format"] for model, known in store.formats(sweep_id).items()}
        scheduler = Scheduler(specs, done=completed, checkpoints=set(checkpoints), formats=formats,
                              max_retries=config.max_retries)
        for row in completed_in_order(rows.values()):
            scheduler.note_times(TrialSpec.from_json(row["spec_json"]), row)
        todo = len(scheduler.todo)
        skipped = len(specs) - todo
        report_dir = config.output_dir / "report"
        seeds = len(config.run_seeds)
        print(f"sweep {sweep_id}: {len(specs)} trials ({len(config.models)} models x "
              f"{len(config.pruners)} pruners x {len(config.rates)} rates"
              + (f" x {seeds} seeds" if seeds > 1 else "") + " + baselines), "
              f"{skipped} already done, {todo} to run; data: {datasets.describe(config.dataset)}, "
              f"weights: {config.weights}; code: {describe_commit(provenance)}", flush=True)
        if scheduler.finished:
            return _finish(store, sweep_id, 0, skipped, started, report_dir, [])

        ray = start_ray()
        try:
            # A live bar only on a terminal; in logs (Docker) each result line says the progress.
            bar = tqdm(total=todo, desc="trials", unit="trial", dynamic_ncols=True,
                       disable=not (progress and sys.stderr.isatty()))
            dispatcher = Dispatcher(ray, config, store, sweep_id, scheduler, bar)
            # Baselines finished in an earlier run hand their saved checkpoint to their trials.
            for key, path in checkpoints.items():
                dispatcher.checkpoints[key] = ray.put(path.read_bytes())
            dispatcher.run(report_dir)
            bar.close()
        except KeyboardInterrupt:
            store.reset_unfinished(sweep_id)
            store.end_sweep(sweep_id, "interrupted")
            raise
        finally:
            ray.shutdown()
        return _finish(store, sweep_id, dispatcher.ran, skipped, started, report_dir, dispatcher.failed)


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
