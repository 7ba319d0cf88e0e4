"""A sweep's results as the report needs them: read once from the database, then pure.

Everything the charts, tables, `recommend` and `export` show comes from here, so the
report needs nothing but the SQLite file (no config file, no models on disk).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from sweep_service.coordinator.lock import is_live
from sweep_service.coordinator.store import ResultStore
from sweep_service.dataset_info import describe
from sweep_service.report import fmt
from sweep_service.spec import BASELINE, COMPLETED, FAILED, PENDING, PRUNED, RUNNING, SKIPPED

# The costs that the trade-off charts and the Pareto set weigh accuracy against.
COSTS = ("params_after", "macs_after", "latency_ms")
COST_NAMES = {"params_after": "parameters", "macs_after": "MACs", "latency_ms": "latency"}


@dataclass(frozen=True)
class SweepResults:
    """One sweep and all its trials; trial rows are plain dicts as the store returns them."""

    sweep: dict[str, Any]
    trials: list[dict[str, Any]]
    dataset_label: str = ""
    other_sweeps: list[str] = field(default_factory=list)
    # The sweep's lock row (sweep_service.coordinator.lock), if a coordinator holds it.
    lock: dict[str, Any] | None = None

    @cached_property
    def config(self) -> dict[str, Any]:
        return self._json_column("config_json")

    @cached_property
    def versions(self) -> dict[str, str]:
        return self._json_column("versions_json")

    def _json_column(self, column: str) -> dict[str, Any]:
        try:
            return json.loads(self.sweep.get(column) or "{}")
        except json.JSONDecodeError:
            return {}

    @property
    def sweep_id(self) -> str:
        return self.sweep["sweep_id"]

    @property
    def running(self) -> bool:
        """Whether a coordinator runs the sweep now: recorded as running, and its
        coordinator's heartbeat is fresh (a killed coordinator leaves the first alone)."""
        return self.sweep.get("status") == RUNNING and is_live(self.lock)

    @property
    def abandoned(self) -> bool:
        """Recorded as running, but no coordinator runs it (killed without a clean-up)."""
        return self.sweep.get("status") == RUNNING and not self.running

    def with_status(self, status: str) -> list[dict[str, Any]]:
        return [t for t in self.trials if t["status"] == status]

    @cached_property
    def completed(self) -> list[dict[str, Any]]:
        return self.with_status(COMPLETED)

    @cached_property
    def failed(self) -> list[dict[str, Any]]:
        return self.with_status(FAILED)

    @cached_property
    def counts(self) -> dict[str, int]:
        counts = {s: 0 for s in (COMPLETED, FAILED, SKIPPED, RUNNING, PENDING)}
        for t in self.trials:
            counts[t["status"]] = counts.get(t["status"], 0) + 1
        return counts

    @cached_property
    def models(self) -> list[str]:
        """Config order first (it is the order the user chose), then any others found."""
        return _ordered(self.config.get("models", []), (t["model"] for t in self.trials))

    @cached_property
    def pruners(self) -> list[str]:
        pruned = (t["pruner"] for t in self.trials if t["kind"] == PRUNED)
        return _ordered(self.config.get("pruners", []), pruned)

    @cached_property
    def rates(self) -> list[float]:
        return sorted({t["rate"] for t in self.trials if t["kind"] == PRUNED})

    def baseline(self, model: str) -> dict[str, Any] | None:
        """The model's completed baseline trial (rate 0), if any."""
        return next((t for t in self.completed if t["model"] == model and t["kind"] == BASELINE), None)

    def curve(self, model: str, pruner: str, metric: str) -> list[tuple[float, float]]:
        """(rate, value) of completed trials, the baseline at rate 0 first; no None values."""
        points = []
        base = self.baseline(model)
        if base is not None and base.get(metric) is not None:
            points.append((0.0, base[metric]))
        points += [(t["rate"], t[metric]) for t in self.completed
                   if t["model"] == model and t["pruner"] == pruner and t["kind"] == PRUNED
                   and t.get(metric) is not None]
        return sorted(points)

    def best_per_model(self) -> list[dict[str, Any]]:
        """Each model's most accurate pruned trial (its baseline if none is done yet)."""
        best = []
        for model in self.models:
            rows = [t for t in self.completed if t["model"] == model and t.get("accuracy") is not None]
            pruned = [t for t in rows if t["kind"] == PRUNED] or rows
            if pruned:
                best.append(max(pruned, key=_accuracy_then_small))
        return best

    def pareto(self, cost: str) -> list[dict[str, Any]]:
        return pareto_front(self.completed, cost)

    def pareto_set(self) -> list[dict[str, Any]]:
        """Trials on the accuracy front of at least one cost; each row gains `fronts`,
        the names of the costs it is optimal for. Ordered by accuracy, best first."""
        fronts: dict[str, list[str]] = {}
        rows: dict[str, dict[str, Any]] = {}
        for cost in COSTS:
            for t in self.pareto(cost):
                rows[t["key"]] = t
                fronts.setdefault(t["key"], []).append(COST_NAMES[cost])
        out = [{**rows[k], "fronts": fronts[k]} for k in rows]
        return sorted(out, key=_accuracy_then_small, reverse=True)


def pareto_front(trials: list[dict[str, Any]], cost: str) -> list[dict[str, Any]]:
    """Trials no other trial beats on both accuracy (higher) and `cost` (lower), in
    increasing cost. Trials missing either figure are left out."""
    points = [t for t in trials if t.get("accuracy") is not None and t.get(cost) is not None]
    points.sort(key=lambda t: (t[cost], -t["accuracy"]))
    front, best = [], float("-inf")
    for t in points:
        if t["accuracy"] > best:
            front.append(t)
            best = t["accuracy"]
    return front


def load_results(db_path: str | Path, sweep_id: str | None = None) -> SweepResults:
    """Read a sweep (the latest if `sweep_id` is None) and its trials from `db_path`.

    Opens the database read-only. Raises StoreError if it cannot be used (missing, not the
    service's) and LookupError if there is no such sweep; both messages say what to do.
    """
    with ResultStore.open_read_only(db_path) as store:
        sweep = store.sweep(sweep_id)
        trials = store.trials(sweep["sweep_id"])
        others = [s["sweep_id"] for s in store.sweeps() if s["sweep_id"] != sweep["sweep_id"]]
        lock = store.lock_holder(sweep["sweep_id"])
    return SweepResults(sweep=sweep, trials=_with_drops(trials),
                        dataset_label=describe(sweep["dataset"]),
                        other_sweeps=others, lock=lock)


def _with_drops(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fill baseline_accuracy and accuracy_drop from the model's baseline where the
    coordinator has not linked them yet (e.g. a pruned trial finished first)."""
    base = {t["model"]: t["accuracy"] for t in trials
            if t["kind"] == BASELINE and t["status"] == COMPLETED and t["accuracy"] is not None}
    out = []
    for t in trials:
        t = dict(t)
        if t["kind"] == BASELINE and t["status"] == COMPLETED and t["accuracy"] is not None:
            t["baseline_accuracy"] = t["baseline_accuracy"] if t["baseline_accuracy"] is not None else t["accuracy"]
            t["accuracy_drop"] = t["accuracy_drop"] if t["accuracy_drop"] is not None else 0.0
        elif t["baseline_accuracy"] is None and t["model"] in base:
            t["baseline_accuracy"] = base[t["model"]]
        if t["accuracy_drop"] is None and t["accuracy"] is not None and t["baseline_accuracy"] is not None:
            t["accuracy_drop"] = t["baseline_accuracy"] - t["accuracy"]
        out.append(t)
    return out


def _accuracy_then_small(t: dict[str, Any]) -> tuple:
    """Sort key: accuracy, then fewer parameters, then lower latency."""
    return (t.get("accuracy") or 0.0, -(t.get("params_after") or float("inf")),
            -(t.get("latency_ms") or float("inf")))


def _ordered(preferred: list[str], seen) -> list[str]:
    seen = list(dict.fromkeys(seen))
    return [x for x in preferred if x in seen] + [x for x in seen if x not in preferred]


def trial_label(t: dict[str, Any]) -> str:
    if t["kind"] == BASELINE:
        return f"{t['model']} baseline"
    return f"{t['model']} {t['pruner']} {fmt.rate(t['rate'])}"
