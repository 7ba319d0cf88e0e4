"""The adaptive search with the scheduler, on a fake clock and a fake cluster: which trials
run, how far, and what is skipped or stopped, and why. Results come from a made-up world
in which accuracy falls with the rate and rises with the budget; no Ray, no training."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import pytest

from sweep_service.coordinator.config import AdaptiveSettings
from sweep_service.coordinator.rungs import RungKeeper
from sweep_service.coordinator.scheduler import Scheduler
from sweep_service.coordinator.search import ADD, CONTINUE, SKIP, STOP, STOP_LINE, AdaptiveSearch, RungRun
from sweep_service.coordinator.store import ResultStore
from sweep_service.spec import BASELINE, COMPLETED, FAILED, PENDING, SKIPPED, TrialSpec
from tests.test_scheduler import grid

RATES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


@dataclass
class World:
    """Full-budget accuracy per (model, pruner): `top - slope * rate**2`; a rung's accuracy
    is lower by `short * (1 - budget)`. Parameters shrink as (1 - rate)**2 of `size`."""

    top: dict = field(default_factory=lambda: {"resnet18": 0.85, "mobilenet_v2": 0.80})
    baseline: dict = field(default_factory=lambda: {"resnet18": 0.90, "mobilenet_v2": 0.95})
    slope: float = 1.2
    pruner_offset: dict = field(default_factory=lambda: {"l1norm": 0.0, "fpgm": -0.03})
    size: dict = field(default_factory=lambda: {"resnet18": 11e6, "mobilenet_v2": 2.2e6})
    short: float = 0.1
    overrides: dict = field(default_factory=dict)  # label -> full-budget accuracy

    def accuracy(self, spec: TrialSpec, budget: float) -> float:
        if spec.kind == BASELINE:
            return self.baseline[spec.model]
        full = self.overrides.get(spec.label, self.top[spec.model] - self.slope * spec.rate ** 2
                                  + self.pruner_offset.get(spec.pruner, 0.0))
        return max(0.0, full - self.short * (1 - budget))

    def figures(self, task) -> dict:
        spec = task.spec if isinstance(task, RungRun) else task
        budget = task.budget if isinstance(task, RungRun) else 1.0
        return {"accuracy": self.accuracy(spec, budget), "budget": budget, "time_finetune_s": 1.0,
                "params_after": self.size[spec.model] * (1 - spec.rate) ** 2}


def seconds(task) -> float:
    return 5.0 if task.kind == BASELINE else 1.0 + 4.0 * (task.budget - task.start)


@dataclass
class Run:
    """What a driven sweep did: tasks started, and each decision."""

    started: list = field(default_factory=list)  # tasks in start order
    decisions: list = field(default_factory=list)  # (time, Decision)
    results: int = 0

    def decided(self, action: str) -> dict[str, str]:
        return {d.spec.label: d.reason for _, d in self.decisions if d.action == action}

    def runs_of(self, label: str) -> list:
        return [t for t in self.started if isinstance(t, RungRun) and t.spec.label == label]


def drive(scheduler: Scheduler, world: World, *, slots: int = 2, keeper: RungKeeper | None = None,
          store: ResultStore | None = None, sweep_id: str = "", stop_after: int | None = None,
          fail: tuple = ()) -> Run:
    """Run the scheduler on `slots` fake slots, as the dispatcher would; with `keeper`
    and `store`, record everything in a real database. Stops after `stop_after` results
    (a killed coordinator: what ran is lost)."""
    run, now, running = Run(), 0.0, []

    def take_decisions():
        for decision in scheduler.decisions():
            run.decisions.append((now, decision))
            if keeper:
                keeper.apply(decision)

    take_decisions()  # what a search rebuilt from a database concludes at once
    while not scheduler.finished:
        for task in scheduler.next(slots - len(running), now):
            running.append((now + seconds(task), task))
            run.started.append(task)
            if store:
                store.mark_running(sweep_id, task.key)
        take_decisions()
        assert running, "nothing runs and nothing can start: the sweep is stuck"
        running.sort(key=lambda r: r[0])
        now, task = running.pop(0)
        spec = task.spec if isinstance(task, RungRun) else task
        status = FAILED if spec.label in fail else COMPLETED
        figures = {**world.figures(task), "status": status} if status == COMPLETED else {"status": FAILED}
        if store:
            if isinstance(task, RungRun):
                short = status == COMPLETED and figures["budget"] < 1.0
                keeper.record(task, dict(figures), b"checkpoint" if short else None)
            else:
                store.record(sweep_id, task.key, figures)
        run.results += 1
        scheduler.trial_done(task, status, figures)
        take_decisions()
        if stop_after is not None and run.results >= stop_after:
            break
    return run


def adaptive(specs, test_size: int = 2000, **settings) -> Scheduler:
    search = AdaptiveSearch(specs, AdaptiveSettings(**settings), test_size)
    return Scheduler(specs, search=search)


def test_a_line_runs_its_rates_low_to_high_and_stops_at_the_floor():
    specs = grid(pruners=("l1norm",), rates=RATES)
    # full accuracy 0.85 - 1.2 rate^2: 0.658 at 40 %, 0.418 at 60 %; 50 % made 0.49, under
    # the floor by less than two standard errors (2 * sqrt(0.49 * 0.51 / 2000) = 2.2 %)
    world = World(overrides={"resnet18 l1norm 50%": 0.49})
    run = drive(adaptive(specs, min_accuracy=0.5, rungs=[]), world)
    started = [t.spec.rate for t in run.started if isinstance(t, RungRun)]
    assert started == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]  # one after the other, low to high
    skipped = run.decided(SKIP)
    assert sorted(skipped) == ["resnet18 l1norm 70%", "resnet18 l1norm 80%"]
    assert set(skipped.values()) == {"line stopped: resnet18 l1norm 60% reached 41.8%, below the floor 50.0% "
                                     "(min_accuracy 50.0%) by more than the noise (2.2%)"}


def test_max_drop_measures_the_floor_from_the_lines_baseline():
    specs = grid(models=("resnet18", "mobilenet_v2"), pruners=("l1norm",), rates=RATES)
    # A drop of 0.15 from baselines of 0.90 and 0.95 leaves floors of 0.75 and 0.80.
    run = drive(adaptive(specs, max_drop=0.15, rungs=[]), World())
    skipped = run.decided(SKIP)
    # resnet18: 0.742 at 30 % is within noise of 0.75; 0.658 at 40 % is not: 50 % and up skipped
    assert {label for label in skipped if label.startswith("resnet18")} == {
        f"resnet18 l1norm {r:.0%}" for r in RATES if r >= 0.5}
    # mobilenet_v2: 0.788 at 10 % is within noise of 0.80, 0.752 at 20 % is not
    assert {label for label in skipped if label.startswith("mobilenet_v2")} == {
        f"mobilenet_v2 l1norm {r:.0%}" for r in RATES if r >= 0.3}
    assert skipped["mobilenet_v2 l1norm 80%"] == (
        "line stopped: mobilenet_v2 l1norm 20% reached 75.2%, below the floor 80.0% (max_drop 15.0% from the "
        "baseline's 95.0%) by more than the noise (1.9%)")
    # both floors given: the higher one holds
    both = drive(adaptive(specs, max_drop=0.15, min_accuracy=0.78, rungs=[]), World())
    assert "below the floor 78.0% (min_accuracy 78.0%)" in both.decided(SKIP)["resnet18 l1norm 80%"]


def test_without_a_floor_a_line_stops_once_accuracy_is_within_noise_of_chance():
    specs = grid(pruners=("l1norm",), rates=RATES)
    world = World(overrides={"resnet18 l1norm 50%": 0.30, "resnet18 l1norm 60%": 0.12})
    # 500 test images: chance 0.1 + 2 * sqrt(0.1 * 0.9 / 500) = 0.1268
    run = drive(adaptive(specs, test_size=500, rungs=[]), world)
    assert [t.spec.rate for t in run.started if isinstance(t, RungRun)][-1] == 0.6
    assert run.decided(SKIP)["resnet18 l1norm 70%"] == (
        "line stopped: resnet18 l1norm 60% reached 12.0%, within noise of chance (10% + 2.7%)")


def test_a_trial_below_the_front_stops_at_its_first_rung_and_one_on_the_front_continues_from_its_checkpoint():
    specs = grid(pruners=("l1norm", "fpgm"), rates=(0.3,))
    # Same parameters; fpgm is 10 points worse, far beyond the noise of 2000 test images.
    world = World(pruner_offset={"l1norm": 0.0, "fpgm": -0.10})
    run = drive(adaptive(specs, rungs=[0.25]), world)
    stopped = run.decided(STOP)
    assert list(stopped) == ["resnet18 fpgm 30%"]
    # at 25 %: 0.85 - 1.2 * 0.3**2 - 0.1 * 0.75 = 0.667 and 0.567; 2 * sqrt(0.667 * 0.333 / 2000 +
    # 0.567 * 0.433 / 2000) = 3.1 %
    assert stopped["resnet18 fpgm 30%"] == (
        "below the front after 25% of the fine-tune: resnet18 l1norm 30% costs no more (5.39M parameters <= "
        "5.39M parameters) and is more accurate (66.7% > 56.7% + 3.1% noise)")
    assert [(t.start, t.budget) for t in run.runs_of("resnet18 fpgm 30%")] == [(0.0, 0.25)]
    assert [(t.start, t.budget) for t in run.runs_of("resnet18 l1norm 30%")] == [(0.0, 0.25), (0.25, 1.0)]
    assert list(run.decided(CONTINUE)) == ["resnet18 l1norm 30%"]


def test_a_trial_stopped_at_its_rung_does_not_stop_its_line():
    specs = grid(pruners=("l1norm", "fpgm"), rates=RATES)
    world = World(pruner_offset={"l1norm": 0.0, "fpgm": -0.10})
    run = drive(adaptive(specs, min_accuracy=0.6, rungs=[0.25]), world)
    # fpgm 30 % reaches 56.7 % after a quarter of its fine-tune, under the floor, and is
    # dominated there by l1norm 30 %; a short budget says nothing of its full fine-tune,
    # so the fpgm line goes on until one of its trials ends a full fine-tune below the floor.
    assert run.decided(STOP)["resnet18 fpgm 30%"].startswith("below the front after 25% of the fine-tune")
    fpgm = [t.spec.rate for t in run.started if isinstance(t, RungRun) and t.spec.pruner == "fpgm" and t.start == 0]
    assert fpgm == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    assert run.decided(SKIP)["resnet18 fpgm 70%"].startswith("line stopped: resnet18 fpgm 60% reached 31.8%, below")


def _recorded(specs, continued: dict[str, tuple[float, float]], waiting: dict[str, float], *,
              stopped: dict[str, str] | None = None) -> tuple[dict, dict]:
    """Rows and rung records as a database holds them: `continued` trials with (rung, full)
    accuracies, `waiting` ones with a rung accuracy and no decision yet, `stopped` ones with
    the reason they stopped at their rung for the floor (their rung accuracy is in `waiting`)."""
    by_label = {s.label: s for s in specs}
    rows = {s.key: {"status": COMPLETED, "accuracy": 0.95, "budget": 1.0} for s in specs if s.kind == BASELINE}
    rungs = {}
    for label, (rung, full) in continued.items():
        spec = by_label[label]
        rows[spec.key] = {"status": COMPLETED, "accuracy": full, "budget": 1.0}
        rungs[spec.key] = [{"budget": 0.25, "accuracy": rung, "params_after": 1e6 * (1 - spec.rate) ** 2,
                            "checkpoint_path": None, "decision": CONTINUE, "reason": None}]
    for label, rung in waiting.items():
        spec, reason = by_label[label], (stopped or {}).get(label)
        rungs[spec.key] = [{"budget": 0.25, "accuracy": rung, "params_after": 1e6 * (1 - spec.rate) ** 2,
                            "checkpoint_path": "x", "decision": STOP_LINE if reason else None, "reason": reason}]
        if reason:
            rows[spec.key] = {"status": COMPLETED, "accuracy": rung, "budget": 0.25, "stop_reason": reason}
    return rows, rungs


def test_a_rung_that_cannot_clear_the_floor_even_recovering_as_well_as_any_trial_ends_its_line():
    specs = grid(pruners=("l1norm", "fpgm"), rates=RATES)
    settings = AdaptiveSettings(min_accuracy=0.8, rungs=[0.25])
    # Five l1norm trials continued past their rung: from 15 % error there they ended at 10 %
    # (ratio 0.67), one at 9 % (0.6): the most any won back is 40 % of its rung error.
    continued = {f"resnet18 l1norm {r:.0%}": (0.85, 0.90) for r in (0.1, 0.2, 0.3, 0.4)}
    continued["resnet18 l1norm 50%"] = (0.85, 0.91)
    rows, rungs = _recorded(specs, continued, {"resnet18 fpgm 10%": 0.50})
    search = AdaptiveSearch(specs, settings, 2000, rows=rows, rungs=rungs)
    decisions = {d.spec.label: d for d in search.take_decisions()}
    # 50 % accuracy at its rung: at best 1 - 0.6 * 0.5 = 70 %, under 80 % by more than
    # 2 * sqrt(0.7 * 0.3 / 2000) = 2.0 %: it stops there, and its line with it.
    assert decisions["resnet18 fpgm 10%"].action == STOP
    assert decisions["resnet18 fpgm 10%"].reason == (
        "cannot clear the floor after 25% of the fine-tune: 50.0%, and at most 70.0% if it won back 40% of its "
        "error, the most any of the 5 trials continued past that rung did; below the floor 80.0% (min_accuracy "
        "80.0%) by more than the noise (2.0%)")
    skipped = {label: d.reason for label, d in decisions.items() if d.action == SKIP}
    assert sorted(skipped) == sorted(f"resnet18 fpgm {r:.0%}" for r in RATES[1:])
    assert set(skipped.values()) == {"line stopped: resnet18 fpgm 10% reached 50.0% after 25% of its fine-tune "
                                     "and cannot clear the floor"}

    # A rung that might clear the floor with that much recovery (1 - 0.6 * 0.34 = 79.6 %, within
    # noise of 80 %) stops only below the front, and the line goes on.
    rows, rungs = _recorded(specs, continued, {"resnet18 fpgm 10%": 0.66})
    search = AdaptiveSearch(specs, settings, 2000, rows=rows, rungs=rungs)
    decided = {d.spec.label: d for d in search.take_decisions()}
    assert decided["resnet18 fpgm 10%"].reason.startswith("below the front after 25% of the fine-tune")
    assert not [d for d in decided.values() if d.action == SKIP]
    assert search.may_start(next(s for s in specs if s.label == "resnet18 fpgm 20%"))

    # With four trials continued, their recovery is not yet evidence enough: no line ends at a rung.
    del continued["resnet18 l1norm 50%"]
    rows, rungs = _recorded(specs, continued, {"resnet18 fpgm 10%": 0.50})
    search = AdaptiveSearch(specs, settings, 2000, rows=rows, rungs=rungs)
    assert search.recovery(0.25) is None
    assert not [d for d in search.take_decisions() if d.action == SKIP]


def test_a_line_ended_at_a_rung_stays_ended_when_the_search_is_rebuilt():
    specs = grid(pruners=("l1norm", "fpgm"), rates=RATES)
    settings = AdaptiveSettings(min_accuracy=0.8, rungs=[0.25])
    reason = "cannot clear the floor after 25% of the fine-tune: ..."
    # Since that stop, a sixth trial recovered far more: the stop and its line's end still hold.
    continued = {f"resnet18 l1norm {r:.0%}": (0.85, 0.90) for r in (0.1, 0.2, 0.3, 0.4, 0.5)}
    continued["resnet18 l1norm 60%"] = (0.60, 0.95)
    rows, rungs = _recorded(specs, continued, {"resnet18 fpgm 10%": 0.50}, stopped={"resnet18 fpgm 10%": reason})
    search = AdaptiveSearch(specs, settings, 2000, rows=rows, rungs=rungs)
    assert not search.may_start(next(s for s in specs if s.label == "resnet18 fpgm 20%"))
    assert sorted(d.spec.label for d in search.take_decisions() if d.action == SKIP) == sorted(
        f"resnet18 fpgm {r:.0%}" for r in RATES[1:])


def test_in_a_sweep_a_collapsed_line_ends_at_a_rung_once_recovery_is_measured():
    specs = grid(models=("resnet18", "mobilenet_v2"), pruners=("l1norm", "fpgm"), rates=RATES)
    # fpgm loses 40 points on resnet18: 0.45 at 10 % in full, 0.375 at its rung.
    world = World(pruner_offset={"l1norm": 0.0, "fpgm": -0.40})
    run = drive(adaptive(specs, min_accuracy=0.6, rungs=[0.25]), world)
    stops = {label: reason for label, reason in run.decided(STOP).items() if reason.startswith("cannot clear")}
    assert stops, "no trial stopped for the floor"
    for label in stops:
        assert [(t.start, t.budget) for t in run.runs_of(label)] == [(0.0, 0.25)]
    # Each such stop skipped its line's higher rates, which never started.
    for label in stops:
        model, pruner, rate = label.split()
        higher = {s.label for s in specs if s.model == model and s.pruner == pruner and s.rate > float(rate[:-1]) / 100}
        assert higher <= set(run.decided(SKIP))
        assert not {t.spec.label for t in run.started if isinstance(t, RungRun)} & higher


def test_a_difference_within_the_noise_stops_nothing():
    specs = grid(pruners=("l1norm", "fpgm"), rates=(0.3,))
    # 2 points apart with 500 test images: the margin is 2 * sqrt(2) * ~2.1 % = 6 points
    world = World(pruner_offset={"l1norm": 0.0, "fpgm": -0.02})
    run = drive(adaptive(specs, test_size=500, rungs=[0.25]), world)
    assert run.decided(STOP) == {} and sorted(run.decided(CONTINUE)) == ["resnet18 fpgm 30%", "resnet18 l1norm 30%"]
    # With 20 000 test images the same gap is beyond the noise.
    run = drive(adaptive(specs, test_size=20_000, rungs=[0.25]), world)
    assert list(run.decided(STOP)) == ["resnet18 fpgm 30%"]


def test_the_spread_across_seeds_widens_the_noise_when_it_is_larger():
    search = AdaptiveSearch([], AdaptiveSettings(), test_size=2000)
    assert search.sd(0.5) == pytest.approx(math.sqrt(0.25 / 2000))
    specs = [dataclasses.replace(s, seed=seed) for seed in (0, 1) for s in grid(pruners=("l1norm",), rates=(0.3,))]
    rows = {s.key: {"status": COMPLETED, "accuracy": 0.9 if s.kind == BASELINE else 0.6 + 0.1 * s.seed,
                    "budget": 1.0} for s in specs}
    seeded = AdaptiveSearch(specs, AdaptiveSettings(), test_size=2000, rows=rows)
    assert seeded.spread == pytest.approx(math.sqrt(0.005))  # two seeds, 0.6 and 0.7
    assert seeded.sd(0.5) == pytest.approx(math.sqrt(0.005))


def test_promotions_wait_for_an_idle_slot_and_the_most_accurate_goes_first():
    specs = grid(models=("resnet18", "mobilenet_v2"), pruners=("l1norm",), rates=(0.1, 0.2))
    run = drive(adaptive(specs, rungs=[0.25]), World(), slots=1)
    first_rungs = [t for t in run.started if isinstance(t, RungRun) and t.start == 0]
    last_first_rung = max(run.started.index(t) for t in first_rungs)
    continued = [t for t in run.started if isinstance(t, RungRun) and t.start > 0]
    assert all(run.started.index(t) > last_first_rung for t in continued)  # nothing else could run
    accuracies = [World().accuracy(t.spec, 0.25) for t in continued]
    assert accuracies == sorted(accuracies, reverse=True)


def test_refine_adds_one_trial_between_the_last_rate_above_the_floor_and_the_first_below():
    specs = grid(pruners=("l1norm",), rates=RATES)
    run = drive(adaptive(specs, min_accuracy=0.5, rungs=[], refine=True), World())
    added = run.decided(ADD)
    assert added == {"resnet18 l1norm 55%": "refines the knee of resnet18 l1norm between 50% and 60%"}
    refined = run.runs_of("resnet18 l1norm 55%")
    assert len(refined) == 1 and refined[0].spec.rate == 0.55
    assert refined[0].spec.key not in {s.key for s in specs}  # a trial of its own, with its own key


def test_a_failed_trial_tells_nothing_and_its_line_goes_on():
    specs = grid(pruners=("l1norm",), rates=(0.1, 0.2, 0.3))
    run = drive(adaptive(specs, min_accuracy=0.5, rungs=[]), World(), fail=("resnet18 l1norm 10%",))
    assert [t.spec.rate for t in run.started if isinstance(t, RungRun)] == [0.1, 0.2, 0.3]


def test_a_failed_baseline_ends_its_lines_without_stalling_the_sweep():
    specs = grid(models=("resnet18", "mobilenet_v2"), pruners=("l1norm",), rates=(0.1, 0.2))
    scheduler = adaptive(specs, rungs=[0.25])
    run = drive(scheduler, World(), fail=("resnet18 baseline",))
    assert scheduler.finished
    assert not [t for t in run.started if t.model == "resnet18" and t.kind != BASELINE]


def _store(tmp_path, specs) -> tuple[ResultStore, RungKeeper]:
    store = ResultStore(tmp_path / "search.db")
    store.begin_sweep(sweep_id="s", name="s", config_json="{}", dataset="synthetic", weights="none", versions={})
    store.add_trials("s", specs)
    return store, RungKeeper(store, "s", tmp_path / "out")


def _resumed(store: ResultStore, specs, settings: AdaptiveSettings) -> Scheduler:
    """A scheduler and search rebuilt from the database, as run_sweep does after a stop."""
    store.reset_unfinished("s")
    rows = {r["key"]: r for r in store.trials("s")}
    search = AdaptiveSearch(specs, settings, 2000, rows=rows, rungs=store.rungs("s"))
    done = {k for k, r in rows.items() if r["status"] == COMPLETED}
    return Scheduler(specs, done=done, checkpoints={s.key for s in specs if s.kind == BASELINE} & done,
                     search=search)


def test_a_search_stopped_mid_way_resumes_from_the_database_without_recomputing_a_finished_rung(tmp_path):
    specs = grid(models=("resnet18", "mobilenet_v2"), pruners=("l1norm", "fpgm"), rates=RATES)
    settings = AdaptiveSettings(min_accuracy=0.5, rungs=[0.25], refine=True)
    whole = drive(Scheduler(specs, search=AdaptiveSearch(specs, settings, 2000)), World())

    store, keeper = _store(tmp_path, specs)
    first = drive(Scheduler(specs, search=AdaptiveSearch(specs, settings, 2000)), World(), keeper=keeper,
                  store=store, sweep_id="s", stop_after=30)
    rungs_before = store.rungs("s")
    rows_before = {r["key"]: r for r in store.trials("s")}
    assert any(r["decision"] is None for records in rungs_before.values() for r in records)  # some undecided
    assert any(r["status"] == COMPLETED for r in rows_before.values())

    second = drive(_resumed(store, specs, settings), World(), keeper=keeper, store=store, sweep_id="s")
    for task in second.started:
        assert rows_before.get(task.key, {}).get("status") != COMPLETED, f"{task.label} ran again"
        if task.key in rungs_before:  # it had a rung: it goes on from the checkpoint, never from scratch
            assert isinstance(task, RungRun) and task.start == max(r["budget"] for r in rungs_before[task.key])
    assert any(t.start > 0 for t in second.started if t.key in rungs_before)  # continued from the first run's
    assert store.rungs("s").keys() >= rungs_before.keys()
    for key, records in rungs_before.items():
        assert [(r["budget"], r["accuracy"], r["finished_at"]) for r in store.rungs("s")[key][:len(records)]] == [
            (r["budget"], r["accuracy"], r["finished_at"]) for r in records]

    # Together, the two runs did what one uninterrupted run does.
    final = {r["key"]: r for r in store.trials("s")}
    assert {r["status"] for r in final.values()} <= {COMPLETED, SKIPPED}
    labels = lambda run, action: set(run.decided(action))  # noqa: E731
    for action in (STOP, SKIP, ADD):
        assert labels(first, action) | labels(second, action) == labels(whole, action), action
    assert {k for k, r in final.items() if r["status"] == SKIPPED} == {
        s.key for s in specs if s.label in whole.decided(SKIP)}
    assert all(r["stop_reason"] for r in final.values() if r["status"] == SKIPPED or (r["budget"] or 1) < 1)
    assert not [r for r in final.values() if r["status"] == PENDING]
    assert not list((tmp_path / "out" / "checkpoints").iterdir())  # every trial ended: trained in full or stopped


@pytest.mark.parametrize("settings, message", [
    ({"search": "adaptive", "adaptive": {"rungs": [0.5, 0.25]}}, "adaptive.rungs: rungs must be increasing fractions"),
    ({"search": "adaptive", "adaptive": {"rungs": [1.0]}}, "adaptive.rungs: rungs must be increasing fractions"),
    ({"search": "adaptive", "adaptive": {"min_accuracy": 1.5}}, "adaptive.min_accuracy: Input should be less than"),
    ({"search": "adaptive", "adaptive": {"front": "size"}}, "adaptive.front: Input should be 'params' or 'macs'"),
    ({"search": "adaptive", "adaptive": {"floor": 0.5}}, "adaptive.floor: unknown field; allowed fields: front, "
                                                         "max_drop, min_accuracy, refine, rungs"),
    ({"adaptive": {"max_drop": 0.05}}, "`adaptive` settings are given but `search` is grid"),
    ({"search": "halving"}, "search: Input should be 'grid' or 'adaptive'"),
])
def test_search_settings_are_checked_and_errors_name_the_field(settings, message):
    from sweep_service.coordinator.config import ConfigError, parse_config

    base = dict(name="x", models=["resnet18"], pruners=["l1norm"], rates=[0.3], dataset="synthetic")
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        parse_config({**base, **settings})
    assert parse_config({**base, "search": "adaptive"}).adaptive == AdaptiveSettings(rungs=[0.25])


def test_a_floor_below_chance_is_raised_to_chance_plus_noise():
    specs = grid(models=("mobilenet_v2",), pruners=("l1norm",), rates=(0.1, 0.2, 0.3))
    world = World(baseline={"mobilenet_v2": 0.11}, overrides={"mobilenet_v2 l1norm 10%": 0.10})
    run = drive(adaptive(specs, test_size=500, max_drop=0.05, rungs=[]), world)  # 0.11 - 0.05 = 0.06
    assert [t.spec.rate for t in run.started if isinstance(t, RungRun)] == [0.1]
    assert run.decided(SKIP)["mobilenet_v2 l1norm 30%"].endswith("reached 10.0%, within noise of chance (10% + 2.7%)")
