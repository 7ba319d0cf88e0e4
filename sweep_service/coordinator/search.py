"""Adaptive search: run only the part of a pruning grid that can change its answer.

Plain logic beside the scheduler (no Ray, no clock, no database): the scheduler asks which
pruned trials may start and how far each trains, and reports every result; the search
answers with decisions, which the dispatcher records. Two rules, both from the grid's
structure (accuracy falls as the rate rises; cost falls with it):

- **Stop a line early.** A line is one (model, pruner, seed)'s rates, run low to high: a
  rate starts once the rate below it has a result that is not under the floor. The first
  rate whose full fine-tune ends under the floor stops the line, and its higher rates are
  skipped. A rung's accuracy is no measure of a full fine-tune's, but it bounds one: once
  MIN_RECOVERIES trials have continued past a rung, the most any of them won back of its
  error there (the smallest ratio of its final error to its rung error) is taken as the
  best a trial stopped at that rung could do. A trial still under the floor after that
  much recovery stops at the rung and ends its line as a full fine-tune would. Any other
  trial stopped at a rung, like a failed one, lets the next rate go. The floor is
  `min_accuracy`, or the line's baseline accuracy minus `max_drop` (with both, the
  higher), and an accuracy is under it only when lower by more than NOISE_Z of its
  standard errors, as a measurement within noise of the floor cannot be told from one on
  it. Without a floor, or with one
  below chance, an accuracy is under the floor while it is within NOISE_Z standard errors
  of chance (one in NUM_CLASSES): the line stops once it cannot be told from guessing.
- **Successive halving.** Every pruned trial first fine-tunes to its first rung (a share of
  its steps, on the full fine-tune's learning-rate schedule), is evaluated, and leaves a
  checkpoint. It continues only if it could still reach the Pareto front of accuracy
  against the configured cost (parameters or MACs, known once it is pruned; latency is
  measured only after the trials, by the measurement stage, so it cannot be a front here):
  it stops as soon as another trial at the same rung costs no more and is more accurate by
  more than NOISE_Z standard errors of the difference. Noise is the binomial standard
  error of an accuracy on the test set, or the spread of a trial's accuracy across seeds
  where the sweep has several, whichever is larger. Extra results only ever add
  dominators, so a stop is final at once; a trial not dominated waits until a slot would
  otherwise be idle, to be judged against as many results as possible, and the most
  accurate waiting trial goes on first (it is the least likely to be dominated later).

With `refine`, a stopped line gains one trial at the midpoint between its last rate above
the floor and its first below it. Everything the search knows comes from results, so a
search rebuilt from the database of an interrupted run decides as the first one would.
"""
from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

from sweep_service.dataset_info import NUM_CLASSES
from sweep_service.spec import BASELINE, COMPLETED, PRUNED, SKIPPED, TrialSpec

if TYPE_CHECKING:
    from sweep_service.coordinator.config import AdaptiveSettings

CHANCE = 1 / NUM_CLASSES
# Two standard errors: a one-sided test at about 2 %, to be confident a stop is not noise.
NOISE_Z = 2.0
# Trials continued past a rung before their recovery bounds the others': with fewer, the
# smallest ratio seen is too likely to overstate how little a fine-tune can win back.
MIN_RECOVERIES = 5
CANNOT_CLEAR = "cannot clear the floor"
COSTS = {"params": "params_after", "macs": "macs_after"}
COST_WORDS = {"params": "parameters", "macs": "MACs"}

STOP, CONTINUE, SKIP, ADD = "stop", "continue", "skip", "add"
# A rung's recorded decision when its trial stopped there because it cannot clear the floor:
# a stop that also ends the trial's line (a stop below the front does not).
STOP_LINE = "stop-line"
# What the search knows of a pruned trial.
NEW, WAITING, PROMOTED, FINAL, FAILED = "new", "waiting", "promoted", "final", "failed"


def _budget_key(budget: float) -> float:
    """Budgets are shares of steps (k / n): equal shares compare equal after rounding."""
    return round(budget, 6)


@dataclass(frozen=True)
class RungRun:
    """The task of fine-tuning a pruned trial from `start` (0: prune it first; else continue
    from its checkpoint) to `budget` (1.0: the end), shares of its fine-tune's steps."""

    spec: TrialSpec
    rung: int  # 1 for the first rung; the full fine-tune is the last
    start: float
    budget: float
    kind: str = PRUNED

    @property
    def key(self) -> str:
        return self.spec.key

    @property
    def model(self) -> str:
        return self.spec.model

    @property
    def rate(self) -> float:
        return self.spec.rate

    @property
    def baseline_key(self) -> str | None:
        return self.spec.baseline_key

    @property
    def epochs(self) -> float:
        """Epochs this task trains (for the scheduler's time estimates)."""
        return self.spec.epochs * (self.budget - self.start)

    @property
    def label(self) -> str:
        return f"{self.spec.label} to {self.budget:.0%}"


@dataclass(frozen=True)
class Decision:
    """What the search decided about a trial: STOP (keep its result at `budget`), CONTINUE
    (train on from its checkpoint at `budget`), SKIP (do not run it), ADD (a refined rate)."""

    action: str
    spec: TrialSpec
    budget: float | None = None
    reason: str = ""
    ends_line: bool = False  # a STOP because it cannot clear the floor: its line ends with it


@dataclass
class Rung:
    """A trial's result at a budget short of the full fine-tune."""

    budget: float
    accuracy: float
    cost: float | None
    checkpoint: bool  # whether it can be continued from


@dataclass
class _Trial:
    spec: TrialSpec
    rungs: dict[float, Rung] = field(default_factory=dict)
    state: str = NEW
    running: bool = False
    accuracy: float | None = None  # of its final result
    budget: float = 1.0  # of its final result
    skipped: bool = False  # by this search: its line stopped below it
    recorded_skip: str | None = None  # the reason the database holds it skipped for, if it does
    refined: bool = False  # added by `refine`: not held back by its line
    ends_line: bool = False  # stopped at a rung because it cannot clear the floor

    @property
    def latest(self) -> Rung | None:
        return self.rungs[max(self.rungs)] if self.rungs else None

    @property
    def known_accuracy(self) -> float | None:
        """The best figure known so far: the final result's, else the latest rung's."""
        if self.state == FINAL:
            return self.accuracy
        return self.latest.accuracy if self.latest else None


@dataclass
class _Line:
    trials: list[_Trial]  # the configured rates, low to high
    refined: bool = False


class AdaptiveSearch:
    """The adaptive search of one sweep. `specs`: its trials (baselines and pruned);
    `settings`: the config's `adaptive`; `test_size`: images each accuracy is measured on.
    From an earlier run: `rows` (the trials table, by key) and `rungs` (the rungs table, by
    key; a rung's checkpoint counts only if its `checkpoint_path` is set and the file exists,
    which the caller checks)."""

    def __init__(self, specs: Iterable[TrialSpec], settings: AdaptiveSettings, test_size: int, *,
                 rows: dict[str, dict[str, Any]] | None = None, rungs: dict[str, list[dict[str, Any]]] | None = None):
        self.settings = settings
        self.test_size = test_size
        self.cost = COSTS[settings.front]
        self.rows = rows or {}
        self.history = rungs or {}
        self.fractions = [*settings.rungs, 1.0]
        self.baselines: dict[str, float] = {}  # baseline key -> accuracy
        self.trials: dict[str, _Trial] = {}
        self.lines: dict[tuple, _Line] = {}
        self._decisions: list[Decision] = []
        self._added: list[TrialSpec] = []
        self.spread: float | None = None  # across seeds, as of the last result
        for spec in specs:
            if spec.kind == BASELINE:
                row = self.rows.get(spec.key)
                if row and row["status"] == COMPLETED and row.get("accuracy") is not None:
                    self.baselines[spec.key] = row["accuracy"]
            else:
                line = self.lines.setdefault(_line_of(spec), _Line([]))
                line.trials.append(self._track(spec))
        for line in self.lines.values():
            line.trials.sort(key=lambda t: t.spec.rate)
        self._settle()

    def _track(self, spec: TrialSpec) -> _Trial:
        """A trial as the earlier runs left it."""
        trial = self.trials[spec.key] = _Trial(spec)
        decisions = {}
        for record in self.history.get(spec.key, []):
            budget = _budget_key(record["budget"])
            decisions[budget] = record.get("decision")
            trial.ends_line |= record.get("decision") == STOP_LINE
            if record.get("accuracy") is not None:
                trial.rungs[budget] = Rung(record["budget"], record["accuracy"], record.get(self.cost),
                                           bool(record.get("checkpoint_path")))
        row = self.rows.get(spec.key) or {}
        if row.get("status") == COMPLETED:
            trial.state, trial.accuracy, trial.budget = FINAL, row.get("accuracy"), row.get("budget") or 1.0
        elif trial.rungs:
            trial.state = PROMOTED if decisions.get(max(trial.rungs)) == CONTINUE else WAITING
        if row.get("status") == SKIPPED:
            trial.recorded_skip = row.get("stop_reason")
        return trial

    # what the scheduler asks ------------------------------------------------------------
    def may_start(self, spec: TrialSpec) -> bool:
        trial = self.trials[spec.key]
        if trial.running or trial.skipped or trial.state not in (NEW, PROMOTED):
            return False
        return trial.state == PROMOTED or trial.refined or trial in self._released(self.lines[_line_of(spec)])

    def task(self, spec: TrialSpec) -> RungRun:
        """The next run of a trial that may start: its first rung, or on from its checkpoint
        (from the start if the checkpoint is lost)."""
        trial = self.trials[spec.key]
        latest = trial.latest
        reached = latest.budget if latest else 0.0
        start = reached if trial.state == PROMOTED and latest.checkpoint else 0.0
        budget = next(f for f in self.fractions if f > reached + 1e-9)
        return RungRun(spec, self.fractions.index(budget) + 1, start, budget)

    def is_open(self, key: str) -> bool:
        """Whether the trial still has work ahead: to start, to be decided, to continue."""
        trial = self.trials.get(key)
        return trial is not None and (trial.running or trial.state in (NEW, WAITING, PROMOTED) and not trial.skipped)

    def started(self, task: Any) -> None:
        if task.kind != BASELINE:
            self.trials[task.key].running = True

    def requeued(self, task: Any) -> None:
        """A started task's worker was lost and it goes back to the queue."""
        if task.kind != BASELINE:
            self.trials[task.key].running = False

    # what happened ------------------------------------------------------------------------
    def result(self, task: Any, status: str, figures: dict[str, Any]) -> None:
        """A task ended with `status` and `figures` (as recorded)."""
        if task.kind == BASELINE:
            if status == COMPLETED and figures.get("accuracy") is not None:
                self.baselines[task.key] = figures["accuracy"]
            self._settle()
            return
        trial = self.trials[task.key]
        trial.running = False
        budget = figures.get("budget", 1.0)
        if status != COMPLETED:
            trial.state = FAILED
        elif budget >= 1.0:
            trial.state, trial.accuracy, trial.budget = FINAL, figures["accuracy"], 1.0
        else:
            trial.rungs[_budget_key(budget)] = Rung(budget, figures["accuracy"], figures.get(self.cost), True)
            trial.state = WAITING
        self._settle()

    def forget(self, key: str) -> None:
        """The trial will not run (its baseline failed)."""
        self.trials[key].state = FAILED
        self._settle()

    def promote(self) -> bool:
        """A slot would idle: let the most accurate waiting trial train on. False if none waits."""
        waiting = [t for t in self.trials.values() if t.state == WAITING]
        if not waiting:
            return False
        best = max(waiting, key=lambda t: (t.latest.accuracy, -(t.latest.cost or math.inf)))
        best.state = PROMOTED
        self._decisions.append(Decision(CONTINUE, best.spec, best.latest.budget))
        return True

    def take_decisions(self) -> list[Decision]:
        """Decisions since the last call, in the order they were taken."""
        decisions, self._decisions = self._decisions, []
        return decisions

    def take_added(self) -> list[TrialSpec]:
        added, self._added = self._added, []
        return added

    # the rules ----------------------------------------------------------------------------
    def _settle(self) -> None:
        """Apply both rules until nothing changes: a stop can end a line."""
        self.spread = self.seed_spread()
        while self._stop_dominated() | self._stop_lines():
            pass

    def _stop_dominated(self) -> bool:
        """Stop the waiting trials that cannot clear the floor or are below the front."""
        changed = False
        for trial in self.trials.values():
            if trial.state != WAITING:
                continue
            floor = self._cannot_clear(trial)
            reason = floor or self._dominated(trial)
            if reason:
                trial.state, trial.accuracy, trial.budget = FINAL, trial.latest.accuracy, trial.latest.budget
                trial.ends_line = floor is not None
                self._decisions.append(Decision(STOP, trial.spec, trial.latest.budget, reason, trial.ends_line))
                changed = True
        return changed

    def recovery(self, budget: float) -> tuple[float, int] | None:
        """The most of its error at `budget` that a trial won back by training in full, as the
        smallest ratio of final to rung error over the trials continued past that rung, and
        how many they are; None while fewer than MIN_RECOVERIES."""
        at = _budget_key(budget)
        ratios = [(1 - t.accuracy) / (1 - t.rungs[at].accuracy) for t in self.trials.values()
                  if t.state == FINAL and t.budget >= 1.0 and t.accuracy is not None and at in t.rungs
                  and t.rungs[at].accuracy < 1.0]
        return (min(ratios), len(ratios)) if len(ratios) >= MIN_RECOVERIES else None

    def _cannot_clear(self, trial: _Trial) -> str | None:
        """Why `trial` would stay under its floor even if the rest of its fine-tune won back
        as much of its error as any trial has, or None if it might clear it."""
        mine = trial.latest
        bound = self.recovery(mine.budget)
        if bound is None:
            return None
        ratio, count = bound
        best = 1 - ratio * (1 - mine.accuracy)
        under = self.under_floor(trial.spec, best)
        if under is None:
            return None
        return (f"{CANNOT_CLEAR} after {mine.budget:.0%} of the fine-tune: {mine.accuracy:.1%}, and at most "
                f"{best:.1%} if it won back {1 - ratio:.0%} of its error, the most any of the {count} trials "
                f"continued past that rung did; {under}")

    def _dominated(self, trial: _Trial) -> str | None:
        """Why `trial` cannot reach the front at its latest rung, or None if it may."""
        mine = trial.latest
        if mine.cost is None:
            return None
        at = _budget_key(mine.budget)
        for other in self.trials.values():
            theirs = other.rungs.get(at)
            if other is trial or theirs is None or theirs.cost is None or theirs.cost > mine.cost:
                continue
            margin = NOISE_Z * math.hypot(self.sd(theirs.accuracy), self.sd(mine.accuracy))
            if theirs.accuracy - mine.accuracy > margin:
                return (f"below the front after {mine.budget:.0%} of the fine-tune: {other.spec.label} costs "
                        f"no more ({_cost(theirs.cost, self.settings.front)} <= "
                        f"{_cost(mine.cost, self.settings.front)}) and is more accurate ({theirs.accuracy:.1%} > "
                        f"{mine.accuracy:.1%} + {margin:.1%} noise)")
        return None

    def sd(self, accuracy: float) -> float:
        """The standard deviation of an accuracy: binomial over the test set's images, or
        the spread across seeds if that is larger."""
        return max(math.sqrt(accuracy * (1 - accuracy) / self.test_size), self.spread or 0.0)

    def seed_spread(self) -> float | None:
        """The pooled standard deviation of accuracy across seeds, over the trials that the
        sweep ran with more than one seed at the same budget; None with one seed."""
        groups: dict[tuple, list[float]] = {}
        for trial in self.trials.values():
            where = trial.spec.model, trial.spec.pruner, trial.spec.rate
            for budget, rung in trial.rungs.items():
                groups.setdefault((*where, budget), []).append(rung.accuracy)
            if trial.state == FINAL and trial.accuracy is not None and trial.budget >= 1.0:
                groups.setdefault((*where, 1.0), []).append(trial.accuracy)
        repeated = [g for g in groups.values() if len(g) > 1]
        if not repeated:
            return None
        dof = sum(len(g) - 1 for g in repeated)
        return math.sqrt(sum(statistics.variance(g) * (len(g) - 1) for g in repeated) / dof)

    def under_floor(self, spec: TrialSpec, accuracy: float) -> str | None:
        """How `accuracy` falls under its line's floor, or None if it does not."""
        chance = NOISE_Z * math.sqrt(CHANCE * (1 - CHANCE) / self.test_size)
        if accuracy < CHANCE + chance:
            return f"within noise of chance ({CHANCE:.0%} + {chance:.1%})"
        floors = []
        if self.settings.min_accuracy is not None:
            floors.append((self.settings.min_accuracy, f"min_accuracy {self.settings.min_accuracy:.1%}"))
        baseline = self.baselines.get(spec.baseline_key)
        if self.settings.max_drop is not None and baseline is not None:
            floors.append((baseline - self.settings.max_drop,
                           f"max_drop {self.settings.max_drop:.1%} from the baseline's {baseline:.1%}"))
        if not floors:
            return None
        floor, why = max(floors)
        noise = NOISE_Z * self.sd(accuracy)
        if accuracy < floor - noise:
            return f"below the floor {floor:.1%} ({why}) by more than the noise ({noise:.1%})"
        return None

    def _released(self, line: _Line) -> list[_Trial]:
        """The line's trials that may start: every rate up to the first whose result is not
        known to be clear of the floor. A rung's accuracy clear of it is enough (more
        fine-tuning rarely loses accuracy); a full fine-tune's under it, or a rung's that
        cannot clear it, stops the line. A trial that failed, or stopped at a rung below the
        front, tells nothing of that: the next rate goes."""
        released = []
        for trial in line.trials:
            released.append(trial)
            if trial.ends_line:
                break
            if trial.state == FAILED or trial.state == FINAL and (trial.budget < 1.0 or trial.accuracy is None):
                continue
            accuracy = trial.known_accuracy
            if accuracy is None or self.under_floor(trial.spec, accuracy):
                break
        return released

    def _stop_lines(self) -> bool:
        """Skip the rates above a line's first full fine-tune under the floor."""
        changed = False
        for line in self.lines.values():
            released = self._released(line)
            last = released[-1]
            if last.ends_line:
                reason = (f"line stopped: {last.spec.label} reached {last.accuracy:.1%} after {last.budget:.0%} "
                          f"of its fine-tune and {CANNOT_CLEAR}")
            elif last.state != FINAL or last.budget < 1.0 or last.accuracy is None:
                continue
            elif under := self.under_floor(last.spec, last.accuracy):
                reason = f"line stopped: {last.spec.label} reached {last.accuracy:.1%}, {under}"
            else:
                continue
            for trial in line.trials[len(released):]:
                if trial.state == NEW and not trial.running and not trial.skipped:
                    trial.skipped = True
                    if trial.recorded_skip != reason:
                        self._decisions.append(Decision(SKIP, trial.spec, reason=reason))
                    changed = True
            if self.settings.refine and not line.refined:
                line.refined = True
                changed |= self._refine(line, released)
        return changed

    def _refine(self, line: _Line, released: list[_Trial]) -> bool:
        """Add the midpoint between the line's last rate clear of the floor and its first under."""
        below = released[-1]
        above = [t for t in released[:-1]
                 if t.known_accuracy is not None and not self.under_floor(t.spec, t.known_accuracy)]
        if not above:
            return False
        rate = round((above[-1].spec.rate + below.spec.rate) / 2, 6)
        if any(t.spec.rate == rate for t in line.trials):
            return False
        spec = dataclasses.replace(below.spec, rate=rate)
        self._track(spec).refined = True
        self._added.append(spec)
        reason = (f"refines the knee of {below.spec.model} {below.spec.pruner} between {above[-1].spec.rate:.0%} "
                  f"and {below.spec.rate:.0%}")
        self._decisions.append(Decision(ADD, spec, reason=reason))
        return True


def _line_of(spec: TrialSpec) -> tuple:
    return spec.model, spec.pruner, spec.seed


def _cost(value: float, front: str) -> str:
    return f"{value / 1e6:.3g}M {COST_WORDS[front]}"
