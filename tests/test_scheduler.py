"""The scheduler alone: a fake clock and a fake cluster, no Ray. Each test runs in
milliseconds."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import pytest

from sweep_service.coordinator.scheduler import (
    PROBE,
    Scheduler,
    estimate_epoch_seconds,
    node_slots,
    pick_next,
    unplaceable,
)
from sweep_service.spec import BASELINE, COMPLETED, FAILED, PRUNED, TrialSpec

COMMON = dict(dataset="synthetic", weights="none", image_size=32, batch_size=64, eval_batch_size=512,
              optimizer={"name": "sgd"}, augment=True, seed=0, train_subset=None, test_subset=None,
              calibration_batches=4, layers={}, prune_from="baseline")


def grid(models=("resnet18",), pruners=("l1norm", "fpgm"), rates=(0.3, 0.6)) -> list[TrialSpec]:
    specs = []
    for model in models:
        base = TrialSpec(kind=BASELINE, model=model, pruner="none", rate=0.0, epochs=2, baseline_key=None,
                         **COMMON)
        specs.append(base)
        specs += [TrialSpec(kind=PRUNED, model=model, pruner=p, rate=r, epochs=1, baseline_key=base.key, **COMMON)
                  for p in pruners for r in rates]
    return specs


def figures(seconds: float) -> dict:
    return {"time_finetune_s": seconds, "time_eval_s": 0.0, "time_total_s": seconds + 0.5}


@dataclass
class FakeCluster:
    """Nodes with a number of slots each; trials take `duration(spec)` seconds of fake time."""

    nodes: dict[str, int]
    duration: callable
    now: float = 0.0
    running: dict[str, tuple] = field(default_factory=dict)  # key -> (task, node, ends at)
    log: list[tuple] = field(default_factory=list)  # (time, event, label)

    def free_on(self, node: str) -> int:
        return self.nodes[node] - sum(1 for _, n, _ in self.running.values() if n == node)

    def place(self, task) -> None:
        node = next(n for n in self.nodes if self.free_on(n) > 0)
        self.running[task.key] = (task, node, self.now + self.duration(task))
        self.log.append((self.now, "start", task.label))


def drive(scheduler: Scheduler, cluster: FakeCluster, *, events=(), fail=(), until: float = 1e6) -> FakeCluster:
    """Run the scheduler on the fake cluster as the dispatcher would. `events`: (time,
    function) pairs applied to the cluster at that time (a node joining or leaving). A
    task past the scheduler's time limit is cancelled and fails, as the dispatcher does."""
    events = sorted(events, key=lambda e: e[0])
    while not scheduler.finished and cluster.now < until:
        free = sum(cluster.free_on(n) for n in cluster.nodes)
        for task in scheduler.next(free, cluster.now):
            cluster.place(task)
        ends = [end for _, _, end in cluster.running.values()]
        next_event = events[0][0] if events else math.inf
        deadlines = [r.started + scheduler.time_limit_s for r in scheduler.running.values()]
        cluster.now = min(min(ends, default=math.inf), next_event, min(deadlines, default=math.inf))
        assert cluster.now < math.inf, "nothing runs and nothing will happen: the scheduler is stuck"
        if events and cluster.now == next_event:
            _, change = events.pop(0)
            for key in change(cluster):  # the keys of tasks whose node left
                task, _, _ = cluster.running.pop(key)
                cluster.log.append((cluster.now, "lost", task.label))
                if not scheduler.lost(task):
                    scheduler.trial_done(task, FAILED)
            continue
        for task in scheduler.overdue(cluster.now):
            del cluster.running[task.key]
            cluster.log.append((cluster.now, "timeout", task.label))
            for not_run in scheduler.trial_done(task, FAILED):
                cluster.log.append((cluster.now, "not run", not_run.spec.label))
        for key, (task, _, end) in list(cluster.running.items()):
            if end == cluster.now:
                del cluster.running[key]
                cluster.log.append((cluster.now, "end", task.label))
                if task.kind == PROBE:
                    scheduler.probe_done(task, "fp32-channels-last")
                else:
                    status = FAILED if task.label in fail else COMPLETED
                    for not_run in scheduler.trial_done(task, status, figures(cluster.duration(task))):
                        cluster.log.append((cluster.now, "not run", not_run.spec.label))
    return cluster


def starts(cluster: FakeCluster) -> list[str]:
    return [label for _, event, label in cluster.log if event == "start"]


def pruned_duration(spec) -> float:
    return 10.0 if spec.kind == BASELINE else 2.0 + 8.0 * (1 - spec.rate)


def test_baselines_first_then_the_longest_trial_first():
    cluster = drive(Scheduler(grid(models=("resnet18", "mobilenet_v2"))), FakeCluster({"a": 2}, pruned_duration))
    order = starts(cluster)
    assert order[:2] == ["resnet18 baseline", "mobilenet_v2 baseline"]
    # once the epoch times are known, lower rates (longer trials) go first
    resnet = [label for label in order if label.startswith("resnet18 ") and "baseline" not in label]
    assert [label.split()[-1] for label in resnet][:2] == ["30%", "30%"]
    assert len(order) == 10 and not cluster.running


def test_a_pruned_trial_waits_for_its_baseline():
    cluster = drive(Scheduler(grid()), FakeCluster({"a": 4}, pruned_duration))
    base_end = next(t for t, event, label in cluster.log if event == "end" and label == "resnet18 baseline")
    pruned_starts = [t for t, event, label in cluster.log if event == "start" and "baseline" not in label]
    assert min(pruned_starts) >= base_end


def test_resume_runs_only_what_is_left_and_retrains_a_baseline_whose_checkpoint_is_gone():
    specs = grid()
    base, *pruned = specs
    done = {base.key, pruned[0].key}
    resumed = drive(Scheduler(specs, done=done, checkpoints={base.key}), FakeCluster({"a": 2}, pruned_duration))
    assert sorted(starts(resumed)) == sorted(s.label for s in pruned[1:])
    lost_checkpoint = drive(Scheduler(specs, done=done, checkpoints=set()), FakeCluster({"a": 2}, pruned_duration))
    assert starts(lost_checkpoint)[0] == "resnet18 baseline"
    assert pruned[0].label not in starts(lost_checkpoint)
    everything_done = Scheduler(specs, done={s.key for s in specs}, checkpoints={base.key})
    assert everything_done.finished and everything_done.next(4, 0.0) == []


def test_a_failed_baseline_leaves_its_trials_not_run_with_the_reason():
    cluster = drive(Scheduler(grid()), FakeCluster({"a": 2}, pruned_duration), fail={"resnet18 baseline"})
    assert starts(cluster) == ["resnet18 baseline"]
    assert sorted(label for _, event, label in cluster.log if event == "not run") == sorted(
        s.label for s in grid()[1:])


def test_a_trial_whose_worker_left_is_retried_elsewhere_up_to_max_retries():
    def leave_b(cluster):
        del cluster.nodes["b"]
        return [key for key, (_, node, _) in cluster.running.items() if node == "b"]

    scheduler = Scheduler(grid(), max_retries=1)
    cluster = drive(scheduler, FakeCluster({"a": 1, "b": 1}, pruned_duration), events=[(14.0, leave_b)])
    lost = [label for _, event, label in cluster.log if event == "lost"]
    assert len(lost) == 1
    assert starts(cluster).count(lost[0]) == 2  # started again, on the node that is left
    assert sorted(set(starts(cluster))) == sorted(s.label for s in grid())
    assert scheduler.finished

    never = Scheduler(grid(pruners=("l1norm",), rates=(0.5,)), max_retries=0)
    never.next(2, 0.0)
    (running,) = never.running.values()
    assert never.lost(running.task) is False  # no retry left: the caller records it failed


def test_a_worker_joining_mid_sweep_gets_trials_at_once():
    def join_c(cluster):
        cluster.nodes["c"] = 2
        return []

    alone = drive(Scheduler(grid(pruners=("l1norm", "fpgm", "l2norm"))), FakeCluster({"a": 1}, pruned_duration))
    joined = drive(Scheduler(grid(pruners=("l1norm", "fpgm", "l2norm"))), FakeCluster({"a": 1}, pruned_duration),
                   events=[(11.0, join_c)])
    at_join = [label for t, event, label in joined.log if event == "start" and t == 11.0]
    assert len(at_join) == 2
    assert joined.now < alone.now


def test_auto_compute_probes_each_model_once_before_its_trials():
    scheduler = Scheduler(grid(models=("resnet18", "mobilenet_v2")), formats={"mobilenet_v2": "fp32"})
    cluster = drive(scheduler, FakeCluster({"a": 2}, lambda t: 1.0 if t.kind == PROBE else pruned_duration(t)))
    order = starts(cluster)
    assert order.count("resnet18 format probe") == 1 and "mobilenet_v2 format probe" not in order
    probe_end = next(t for t, event, label in cluster.log if event == "end" and label == "resnet18 format probe")
    assert all(t >= probe_end for t, event, label in cluster.log if event == "start" and label.startswith("resnet18 ")
               and "probe" not in label)
    assert scheduler.formats == {"mobilenet_v2": "fp32", "resnet18": "fp32-channels-last"}


def test_trial_duration_estimate_follows_the_measured_trials():
    assert estimate_epoch_seconds([], 0.5) == 0.0
    # only the baseline known: proportional to the share of filters kept
    assert estimate_epoch_seconds([(1.0, 20.0)], 0.3) == pytest.approx(6.0)
    # a model whose time barely shrinks with pruning (as mobilenet_v2's)
    flat = [(1.0, 20.0), (0.7, 19.0)]
    assert estimate_epoch_seconds(flat, 0.3) == pytest.approx(17.67, abs=0.01)
    assert estimate_epoch_seconds([(1.0, 20.0), (0.5, 2.0)], 0.01) == 0.0  # never negative


def test_the_last_trials_are_chosen_so_that_the_slots_finish_together():
    # One slot free, the other busy for 1 s more; trials of 2, 2 and 3 s. Longest first ends
    # at 5 s (3 here; 2 there at 1 s; 2 at 3 s), a 2-second trial first at 4 s (2 here; 3
    # there at 1 s; 2 here at 2 s).
    assert pick_next([2.0, 2.0, 3.0], [1.0]) in (0, 1)
    # Where longest first is as good, it stays: the longest.
    assert pick_next([5.0, 4.0, 3.0], [4.0]) == 0
    assert pick_next([4.0, 9.0, 1.0], [0.0, 0.0]) == 1  # three free slots


def test_a_trial_that_never_returns_is_overdue_at_its_time_limit_and_the_rest_run():
    hung = "resnet18 fpgm 30%"
    duration = lambda t: math.inf if t.label == hung else pruned_duration(t)  # noqa: E731
    scheduler = Scheduler(grid(), time_limit_s=100.0)
    cluster = drive(scheduler, FakeCluster({"a": 2}, duration))
    timeouts = [(t, label) for t, event, label in cluster.log if event == "timeout"]
    started = next(t for t, event, label in cluster.log if event == "start" and label == hung)
    assert timeouts == [(started + 100.0, hung)]
    assert sorted(set(starts(cluster))) == sorted(s.label for s in grid()) and scheduler.finished

    quick = Scheduler(grid(), time_limit_s=5.0)  # a baseline over its limit: its trials do not run
    cluster = drive(quick, FakeCluster({"a": 2}, pruned_duration))
    assert [label for _, event, label in cluster.log if event == "timeout"] == ["resnet18 baseline"]
    assert len([1 for _, event, _ in cluster.log if event == "not run"]) == 4

    idle = Scheduler(grid(), time_limit_s=10.0)
    idle.next(1, 0.0)
    assert idle.overdue(9.9) == [] and [t.label for t in idle.overdue(10.0)] == ["resnet18 baseline"]


def test_requests_are_placed_node_by_node_not_on_the_cluster_total():
    two_cpus = [dataclasses.replace(s, cpus=2.0) for s in grid()]
    small_nodes = [{"CPU": 1.0}, {"CPU": 1.0}]  # 2 CPUs in all, but no node with 2
    waiting = unplaceable(two_cpus, small_nodes)
    assert list(waiting) == [(2.0, 0.0)] and len(waiting[(2.0, 0.0)]) == len(two_cpus)
    assert sum(node_slots(node, 2.0, 0.0) for node in small_nodes) == 0
    assert unplaceable(two_cpus, [{"CPU": 1.0}, {"CPU": 4.0}]) == {}
    assert node_slots({"CPU": 4.0}, 2.0, 0.0) == 2

    half_gpu = [dataclasses.replace(s, gpus=0.5) for s in grid()[:2]]
    assert list(unplaceable(half_gpu, [{"CPU": 8.0}])) == [(1.0, 0.5)]
    assert unplaceable(half_gpu, [{"CPU": 8.0, "GPU": 1.0}]) == {}
    assert node_slots({"CPU": 8.0, "GPU": 1.0}, 1.0, 0.5) == 2
    assert unplaceable(grid(), []) != {}  # no node at all
