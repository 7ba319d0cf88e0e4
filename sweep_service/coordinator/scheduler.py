"""Which trial runs next: the sweep's scheduling, as plain logic apart from Ray.

The dispatcher (sweep_service.coordinator.sweep) tells the scheduler what happened (a task
started, finished, or lost its worker) and asks it which tasks to start on the slots that
are free. Nothing here calls Ray or reads a clock: time comes in as arguments, so tests
drive it with a fake clock and a fake cluster.

Order of work:
- a model's format probe (with `compute: auto`) comes before any trial of the model;
- baselines next, since every pruned trial of a model starts from its baseline's checkpoint;
- then the longest trial first (an estimate fitted per model to its finished trials), and
  for the last few, the one after which the rest would end soonest (`pick_next`), so
  that the slots finish together instead of one long trial running alone at the end.
A trial whose worker died goes back to the queue up to `max_retries` times; one that runs
longer than `time_limit_s` is `overdue` (the dispatcher cancels it and records why).

Where a task can run is counted node by node (`node_slots`): a trial cannot span nodes, so
a request no single node can hold waits for ever, however many CPUs the cluster has in
total; `unplaceable` names those tasks.

With an adaptive search (sweep_service.coordinator.search) the search also decides which
pruned trials may start and how far each trains (its tasks are RungRuns), and a slot that
would otherwise idle lets a trial waiting at a rung train on.
"""
from __future__ import annotations

import heapq
import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Iterable, Union

from sweep_service.coordinator.search import AdaptiveSearch, Decision, RungRun
from sweep_service.spec import BASELINE, COMPLETED, TrialSpec

# The last trials are chosen by looking ahead (pick_next) once at most this many per slot
# are left; before that, longest first, whose order ahead matters little.
PLAN_AHEAD = 8
PROBE = "probe"


@dataclass(frozen=True)
class FormatProbe:
    """A short task that measures a model's candidate formats (`compute: auto`), run with
    the resources and batch of the model's trials."""

    spec: TrialSpec  # the model's (first) baseline
    kind: str = PROBE

    @property
    def model(self) -> str:
        return self.spec.model

    @property
    def key(self) -> str:
        return f"probe:{self.spec.model}"

    @property
    def label(self) -> str:
        return f"{self.spec.model} format probe"


Task = Union[TrialSpec, FormatProbe, RungRun]
Request = tuple[float, float]  # (CPUs, GPUs) a task asks for


def request_of(task: Task) -> Request:
    spec = task if isinstance(task, TrialSpec) else task.spec
    return spec.cpus, spec.gpus


def describe_request(request: Request) -> str:
    cpus, gpus = request
    return f"{cpus:g} CPU(s)" + (f" and {gpus:g} GPU(s)" if gpus else "")


def node_slots(resources: dict[str, float], cpus: float, gpus: float) -> int:
    """How many tasks asking for `cpus` CPUs and `gpus` GPUs fit on one node offering
    `resources` (Ray's resource dict of the node)."""
    slots = int(resources.get("CPU", 0) // cpus) if cpus > 0 else math.inf
    if gpus > 0:
        slots = min(slots, int(resources.get("GPU", 0) // gpus))
    return 0 if slots == math.inf else int(slots)


def unplaceable(tasks: Iterable[Task], nodes: list[dict[str, float]]) -> dict[Request, list[Task]]:
    """The tasks that no node of `nodes` (each node's resource dict) can run, by request."""
    waiting: dict[Request, list[Task]] = {}
    for task in tasks:
        request = request_of(task)
        if not any(node_slots(node, *request) for node in nodes):
            waiting.setdefault(request, []).append(task)
    return waiting


@dataclass(frozen=True)
class Running:
    task: Task
    started: float
    attempt: int


@dataclass(frozen=True)
class NotRun:
    """A trial that will not run, and why (its baseline failed, say)."""

    spec: TrialSpec
    reason: str


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
    longest first, would end soonest; of equals, the longest."""
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


@dataclass
class Scheduler:
    """The sweep's queue. `specs`: every trial of the sweep, in grid order; `done`: keys of
    trials finished in an earlier run that need not run again; `checkpoints`: keys of
    completed baselines whose checkpoint can be handed to their trials; `formats`: each
    model's known training format, or None if the sweep fixes one (no probes); `search`:
    the adaptive search over `specs`, or None to run the full grid;
    `time_limit_s`: how long a task may run, from its start."""

    specs: list[TrialSpec]
    done: set[str] = field(default_factory=set)
    checkpoints: set[str] = field(default_factory=set)
    formats: dict[str, str] | None = None
    max_retries: int = 2
    search: AdaptiveSearch | None = None
    time_limit_s: float = math.inf

    def __post_init__(self) -> None:
        # A completed baseline whose checkpoint is gone is trained again: its trials need it.
        self.todo: list[TrialSpec] = [
            s for s in self.specs
            if s.key not in self.done or (s.kind == BASELINE and s.key not in self.checkpoints
                                          and any(t.baseline_key == s.key and t.key not in self.done
                                                  for t in self.specs))]
        self.probes: list[FormatProbe] = []
        if self.formats is not None:
            first_baselines = {}
            for spec in self.todo:
                first_baselines.setdefault(spec.model, next(s for s in self.specs if s.model == spec.model
                                                            and s.kind == BASELINE))
            self.probes = [FormatProbe(b) for m, b in first_baselines.items() if m not in self.formats]
        self.running: dict[str, Running] = {}
        self.attempts: dict[str, int] = {}
        self.speeds: dict[str, list[tuple[float, float]]] = {}  # model -> (share kept, s per epoch)
        self.overheads: dict[str, list[float]] = {}  # model -> seconds besides epochs, pruned trials
        if self.search is not None:
            self._follow_search()

    # what can run -------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return not (self.todo or self.probes or self.running)

    def _can_start(self, spec: TrialSpec) -> bool:
        if spec.key in self.running:
            return False
        if self.formats is not None and spec.model not in self.formats:
            return False
        if spec.kind == BASELINE:
            return True
        return spec.baseline_key in self.checkpoints and (self.search is None or self.search.may_start(spec))

    def ready(self) -> list[Task]:
        """Tasks that could start now, probes first, then baselines, in grid order."""
        probes = [p for p in self.probes if p.key not in self.running]
        trials = [s if self.search is None or s.kind == BASELINE else self.search.task(s)
                  for s in self.todo if self._can_start(s)]
        return [*probes, *sorted(trials, key=lambda s: s.kind != BASELINE)]

    def blocked(self) -> bool:
        """Whether trials remain that nothing running or ready can release (none, unless
        the caller gave inconsistent state)."""
        return not self.running and not self.ready() and not self.finished

    def next(self, free_slots: int, now: float) -> list[Task]:
        """The tasks to start on `free_slots` free slots now (marked as started)."""
        chosen: list[Task] = []
        for _ in range(max(free_slots, 0)):
            ready = self.ready()
            if not ready and self.search is not None and self.search.promote():
                ready = self.ready()
            if not ready:
                break
            task = ready[0] if ready[0].kind in (PROBE, BASELINE) else self._longest_or_planned(
                [t for t in ready if t.kind not in (PROBE, BASELINE)], free_slots - len(chosen), now)
            self.start(task, now)
            chosen.append(task)
        return chosen

    def _longest_or_planned(self, ready: list[TrialSpec], free_slots: int, now: float) -> TrialSpec:
        estimates = [self.expected_seconds(s) for s in ready]
        longest = max(range(len(ready)), key=estimates.__getitem__)
        slots = len(self.running) + free_slots
        waiting = len(self.todo) > len(ready)  # more trials will become ready later
        if waiting or len(ready) > PLAN_AHEAD * slots:
            return ready[longest]
        busy = self.seconds_left(now) + [0.0] * max(0, free_slots - 1)
        if math.inf in busy:
            return ready[longest]
        return ready[pick_next(estimates, busy)]

    def overdue(self, now: float) -> list[Task]:
        """Running tasks that have used up their time limit (`time_limit_s`)."""
        return [r.task for r in self.running.values() if now - r.started >= self.time_limit_s]

    def unfinished(self) -> list[Task]:
        """Tasks still to run (probes and trials), running ones included."""
        return [*self.probes, *self.todo]

    # what happened ------------------------------------------------------------------------
    def start(self, task: Task, now: float) -> None:
        self.attempts[task.key] = self.attempts.get(task.key, 0) + 1
        self.running[task.key] = Running(task, now, self.attempts[task.key])
        if self.search is not None:
            self.search.started(task)

    def probe_done(self, probe: FormatProbe, fastest: str) -> None:
        """The model's format is known: its trials may start."""
        self.running.pop(probe.key, None)
        self.probes = [p for p in self.probes if p.key != probe.key]
        self.formats[probe.model] = fastest

    def trial_done(self, spec: TrialSpec | RungRun, status: str, figures: dict[str, Any] | None = None) -> list[NotRun]:
        """A trial (or a rung of one) ended with `status` (as recorded). Returns the trials
        that will not run because of it: a failed baseline's pruned trials."""
        self.running.pop(spec.key, None)
        self.todo = [s for s in self.todo if s.key != spec.key]
        if self.search is not None:
            self.attempts.pop(spec.key, None)  # a trial's next rung has retries of its own
            self.search.result(spec, status, figures or {})
            self._follow_search()
        if status == COMPLETED:
            self.note_times(spec, figures or {})
            if spec.kind == BASELINE:
                self.checkpoints.add(spec.key)
            return []
        if spec.kind != BASELINE:
            return []
        orphans = [s for s in self.todo if s.baseline_key == spec.key]
        self.todo = [s for s in self.todo if s.baseline_key != spec.key]
        if self.search is not None:
            for orphan in orphans:
                self.search.forget(orphan.key)
            self._follow_search()
        return [NotRun(s, f"baseline of {spec.model} failed; trial not run") for s in orphans]

    def decisions(self) -> list[Decision]:
        """The search's decisions since the last call (none without a search)."""
        return self.search.take_decisions() if self.search is not None else []

    def _follow_search(self) -> None:
        """Queue the pruned trials the search has work for (added ones included), in grid order."""
        self.specs = [*self.specs, *self.search.take_added()]
        self.todo = [s for s in self.todo if s.kind == BASELINE] + [
            s for s in self.specs if s.kind != BASELINE and s.key not in self.done and self.search.is_open(s.key)]

    def lost(self, task: Task) -> bool:
        """The task's worker died. True if it goes back to the queue; False if it has used
        up its retries (then the caller records it failed and calls trial_done)."""
        self.running.pop(task.key, None)
        retry = self.attempts.get(task.key, 0) <= self.max_retries
        if retry and self.search is not None:
            self.search.requeued(task)
        return retry

    # estimates ------------------------------------------------------------------------------
    def note_times(self, spec: TrialSpec, figures: dict[str, Any]) -> None:
        """Learn a model's epoch time and per-trial overhead from a finished trial's phases."""
        seconds = (figures.get("time_finetune_s") or 0.0) + (figures.get("time_eval_s") or 0.0)
        if seconds <= 0:
            return
        # A RungRun's epochs are its run's share; a whole trial's result may be short of its epochs.
        epochs = spec.epochs if isinstance(spec, RungRun) else spec.epochs * (figures.get("budget") or 1.0)
        self.speeds.setdefault(spec.model, []).append((1 - spec.rate, seconds / (epochs or 1)))
        if spec.kind != BASELINE and figures.get("time_total_s"):
            self.overheads.setdefault(spec.model, []).append(figures["time_total_s"] - seconds)

    def expected_seconds(self, task: Task) -> float:
        """A task's rough cost, to choose which to dispatch; unknown (inf) for baselines."""
        if task.kind in (PROBE, BASELINE):
            return math.inf
        overheads = self.overheads.get(task.model)
        return (estimate_epoch_seconds(self.speeds.get(task.model, []), 1 - task.rate) * (task.epochs or 1)
                + (statistics.median(overheads) if overheads else 0.0))

    def seconds_left(self, now: float) -> list[float]:
        """Expected seconds each running task still takes (inf for a baseline)."""
        return [max(0.0, self.expected_seconds(r.task) - (now - r.started)) for r in self.running.values()]


def completed_in_order(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Completed rows, baselines first, in the order they finished (to replay estimates)."""
    done = [r for r in rows if r["status"] == COMPLETED]
    return sorted(done, key=lambda r: (r["kind"] != BASELINE, str(r["finished_at"] or "")))
