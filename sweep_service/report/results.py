"""A sweep's results as the report needs them: read once from the database, then pure.

Everything the charts, tables, `recommend` and `export` show comes from here, so the
report needs nothing but the SQLite file (no config file, no models on disk).

A trial is one (model, pruner, rate, seed); a configuration is one (model, pruner, rate)
over its seeds (sweep_service.report.stats): what the charts, the Pareto front and
`recommend` compare is configurations, by their mean, with a 95 % interval where two
seeds or more were run.

An adaptive search (docs/search.md) leaves some trials `skipped` and stops others after a
share of their fine-tune: those keep a short-budget result (`budget` < 1). A short
fine-tune's accuracy is not comparable with a full one's, so configurations, and with them
means, intervals, Pareto fronts and `recommend`, hold full-budget trials only; the short
ones are `SweepResults.stopped_early`, which the tables list and the charts draw apart.

A sweep that made deployable variants (docs/edge.md) also has a row per variant of each
completed trial: the trial's figures with the variant's own accuracy (in the runtime it
ships in), file size, and latency and peak memory from the latest measurement run, with
the node that measured them. Variants are compared likewise, one (model, pruner, rate,
format) over its seeds.
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
from sweep_service.report import fmt, stats
from sweep_service.report.stats import Estimate, estimate, paired_difference
from sweep_service.spec import BASELINE, COMPLETED, FAILED, PENDING, PRUNED, RUNNING, SKIPPED
from sweep_service.worker.runtime import FORMATS

# The costs that the trade-off charts and the Pareto set weigh accuracy against.
COSTS = ("params_after", "macs_after", "latency_ms")
COST_NAMES = {"params_after": "parameters", "macs_after": "MACs", "latency_ms": "latency"}
# The costs deployable variants are weighed by: the file, and latency on the measuring node.
VARIANT_COSTS = ("model_size_bytes", "latency_ms")
VARIANT_COST_NAMES = {"model_size_bytes": "size", "latency_ms": "latency"}
# The figures a configuration averages over its seeds.
METRICS = ("accuracy", "accuracy_pruned", "accuracy_drop", "baseline_accuracy", "channel_sparsity",
           "params_before", "params_after", "param_reduction", "macs_before", "macs_after", "mac_reduction",
           "model_size_bytes", "latency_ms", "time_prune_s", "time_speedup_s", "time_finetune_s", "time_eval_s",
           "time_measure_s", "time_total_s", "time_wait_s")
# The figures a variant configuration (model, pruner, rate, format) averages over its seeds.
VARIANT_METRICS = ("accuracy", "accuracy_drop", "vs_fp32_accuracy", "vs_fp32_latency", "params_after",
                   "param_reduction", "weights_zeroed", "macs_after", "model_size_bytes", "compressed_bytes",
                   "latency_ms", "latency_p10_ms", "latency_p90_ms", "peak_rss_mb")
# A variant row's figures from its measurement (smallest batch size of the latest run).
MEASURED = ("latency_ms", "latency_p10_ms", "latency_p90_ms", "round_spread", "peak_rss_mb", "batch_size",
            "threads", "node_host", "cpu_model", "cpu_arch", "cpus", "load_avg")


@dataclass(frozen=True)
class Configuration:
    """One (model, pruner, rate) and its completed trials, one per seed (a baseline's
    pruner is "none" and its rate 0)."""

    model: str
    pruner: str
    rate: float
    kind: str
    trials: tuple[dict[str, Any], ...]
    metrics: tuple[str, ...] = METRICS  # the figures averaged over the seeds

    @property
    def seeds(self) -> list[int]:
        return [t["seed"] for t in self.trials]

    def values(self, metric: str) -> dict[int, float]:
        """The seeds' values of `metric` (trials without it left out)."""
        return {t["seed"]: t[metric] for t in self.trials if t.get(metric) is not None}

    def estimate(self, metric: str) -> Estimate | None:
        return estimate(self.values(metric).values())

    def row(self) -> dict[str, Any]:
        """A trial-like row with each figure's mean over the seeds, for tables, the Pareto
        front and `recommend`; `spread` holds each figure's Estimate, `n` the seeds."""
        first = self.trials[0]
        spread = {m: e for m in self.metrics if (e := self.estimate(m)) is not None}
        hosts = {t.get("worker_host") for t in self.trials}
        return {**{k: v for k, v in first.items() if k not in self.metrics},
                **{m: e.mean for m, e in spread.items()},
                **{m: None for m in self.metrics if m not in spread},
                "key": first["key"], "keys": [t["key"] for t in self.trials], "seed": None,
                "seeds": self.seeds, "n": len(self.trials), "spread": spread,
                "worker_host": hosts.pop() if len(hosts) == 1 else "several",
                "attempts": sum(t.get("attempts") or 0 for t in self.trials)}


@dataclass(frozen=True)
class Comparison:
    """Two pruners of one model at one rate, by their paired accuracy difference."""

    model: str
    rate: float
    first: str
    second: str
    difference: Estimate  # first - second, over the seeds both completed

    @property
    def verdict(self) -> str:
        return stats.verdict(self.difference, self.first, self.second)


@dataclass(frozen=True)
class SweepResults:
    """One sweep and all its trials; trial rows are plain dicts as the store returns them."""

    sweep: dict[str, Any]
    trials: list[dict[str, Any]]
    dataset_label: str = ""
    other_sweeps: list[str] = field(default_factory=list)
    # The sweep's lock row (sweep_service.coordinator.lock), if a coordinator holds it.
    lock: dict[str, Any] | None = None
    # A row per made variant of a completed trial (variant_rows), empty for sweeps without.
    variants: list[dict[str, Any]] = field(default_factory=list)

    @cached_property
    def config(self) -> dict[str, Any]:
        return self._json_column("config_json")

    @cached_property
    def versions(self) -> dict[str, str]:
        return self._json_column("versions_json")

    @cached_property
    def provenance(self) -> dict[str, Any]:
        """The git commit and data set hash the sweep's latest run recorded (empty for
        sweeps recorded before they were)."""
        return self._json_column("provenance_json")

    @cached_property
    def worker_versions(self) -> list[tuple[dict[str, str], list[str]]]:
        """Each distinct set of library versions the completed trials' workers reported,
        with the hosts that had it; most trials first."""
        seen: dict[str, list[dict[str, Any]]] = {}
        for t in self.completed:
            if t.get("worker_versions_json"):
                seen.setdefault(t["worker_versions_json"], []).append(t)
        out = []
        for text, trials in sorted(seen.items(), key=lambda kv: -len(kv[1])):
            try:
                versions = json.loads(text)
            except json.JSONDecodeError:
                continue
            out.append((versions, sorted({t.get("worker_host") or "?" for t in trials})))
        return out

    def worker_version_differences(self) -> dict[str, list[str]]:
        """Library -> its versions, for each library whose version differed between workers."""
        names = sorted({name for versions, _ in self.worker_versions for name in versions})
        found = {name: list(dict.fromkeys(versions.get(name, "not reported") for versions, _ in self.worker_versions))
                 for name in names}
        return {name: values for name, values in found.items() if len(values) > 1}

    def settings(self, column: str) -> list[str]:
        """The distinct values of a per-trial setting (e.g. `grouping`) of the pruned trials."""
        return sorted({t[column] for t in self.trials if t["kind"] == PRUNED and t.get(column) is not None})

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
    def full_budget(self) -> list[dict[str, Any]]:
        """Completed trials that trained their whole fine-tune (all of a grid sweep's)."""
        return [t for t in self.completed if is_full_budget(t)]

    @cached_property
    def stopped_early(self) -> list[dict[str, Any]]:
        """Completed trials an adaptive search stopped at a rung: a short-budget result."""
        return [t for t in self.completed if not is_full_budget(t)]

    @cached_property
    def skipped(self) -> list[dict[str, Any]]:
        """Trials an adaptive search did not run (their line fell below the floor)."""
        return self.with_status(SKIPPED)

    @property
    def adaptive(self) -> dict[str, Any] | None:
        """The adaptive search's settings, if the sweep was configured with one."""
        if self.config.get("search") != "adaptive":
            return None
        return self.config.get("adaptive") or {}

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

    @cached_property
    def seeds(self) -> list[int]:
        """Every seed of the sweep's trials."""
        return sorted({t["seed"] for t in self.trials if t["seed"] is not None})

    @cached_property
    def configurations(self) -> dict[tuple[str, str, float], Configuration]:
        """Full-budget trials grouped by (model, pruner, rate), baselines as (model, "none", 0),
        in grid order: models and pruners in config order, each model's baseline first.
        Short-budget results (`stopped_early`) are left out: averaged in, they would pull a
        configuration's mean towards a fine-tune it did not have."""
        groups: dict[tuple[str, str, float], list[dict[str, Any]]] = {}
        for t in self.full_budget:
            groups.setdefault((t["model"], t["pruner"], t["rate"]), []).append(t)
        models = {m: i for i, m in enumerate(self.models)}
        pruners = {p: i for i, p in enumerate(self.pruners)}
        order = sorted(groups, key=lambda k: (models[k[0]], -1 if k[1] == "none" else pruners[k[1]], k[2]))
        return {k: Configuration(*k, kind=groups[k][0]["kind"],
                                 trials=tuple(sorted(groups[k], key=lambda t: t["seed"] or 0)))
                for k in order}

    @cached_property
    def summaries(self) -> list[dict[str, Any]]:
        """A row per configuration (Configuration.row), in grid order."""
        return [c.row() for c in self.configurations.values()]

    @property
    def spread_measured(self) -> bool:
        """Whether some configuration has two seeds or more (else no interval anywhere)."""
        return any(len(c.trials) > 1 for c in self.configurations.values())

    def no_spread_reason(self) -> str:
        """Why no figure has an interval, when none has."""
        if len(self.seeds) > 1:
            return (f"{len(self.seeds)} seeds per configuration, none with two of them completed yet: "
                    "no interval yet")
        return "one seed per configuration: no spread measured"

    def baseline(self, model: str) -> Configuration | None:
        """The model's baseline configuration (its completed baselines, one per seed)."""
        return self.configurations.get((model, "none", 0.0))

    def curve(self, model: str, pruner: str, metric: str,
              baseline_metric: str | None = None) -> list[tuple[float, Estimate]]:
        """(rate, mean and interval) of the configurations with `metric`, the baseline's
        `baseline_metric` (default: the same) at rate 0 first."""
        keys = [(model, "none", 0.0)] + [(model, pruner, r) for r in self.rates]
        points = []
        for key in keys:
            config = self.configurations.get(key)
            wanted = (baseline_metric or metric) if key[1] == "none" else metric
            value = config.estimate(wanted) if config else None
            if value is not None:
                points.append((key[2], value))
        return points

    def pairwise(self, model: str, metric: str = "accuracy") -> list[Comparison]:
        """Each pair of the model's pruners at each rate, by their paired difference in
        `metric` over the seeds both completed; rates in order, pairs in config order."""
        out = []
        for rate in self.rates:
            for i, first in enumerate(self.pruners):
                for second in self.pruners[i + 1:]:
                    a, b = (self.configurations.get((model, p, rate)) for p in (first, second))
                    difference = paired_difference(a.values(metric), b.values(metric)) if a and b else None
                    if difference is not None:
                        out.append(Comparison(model, rate, first, second, difference))
        return out

    def best_per_model(self) -> list[dict[str, Any]]:
        """Each model's most accurate pruned configuration by mean (its baseline if none is
        done yet)."""
        best = []
        for model in self.models:
            rows = [t for t in self.summaries if t["model"] == model and t.get("accuracy") is not None]
            pruned = [t for t in rows if t["kind"] == PRUNED] or rows
            if pruned:
                best.append(max(pruned, key=_accuracy_then_small))
        return best

    def pareto(self, cost: str) -> list[dict[str, Any]]:
        return pareto_front(self.summaries, cost)

    def pareto_set(self) -> list[dict[str, Any]]:
        """Configurations on the accuracy front of at least one cost (by their means); each
        row gains `fronts`, the names of the costs it is optimal for. Ordered by accuracy,
        best first."""
        fronts: dict[str, list[str]] = {}
        rows: dict[str, dict[str, Any]] = {}
        for cost in COSTS:
            for t in self.pareto(cost):
                rows[t["key"]] = t
                fronts.setdefault(t["key"], []).append(COST_NAMES[cost])
        out = [{**rows[k], "fronts": fronts[k]} for k in rows]
        return sorted(out, key=_accuracy_then_small, reverse=True)


    @cached_property
    def unstructured_pruners(self) -> set[str]:
        """Pruners whose trials zeroed weights instead of removing parameters."""
        return {t["pruner"] for t in self.completed if t.get("structure") == "unstructured"}

    @cached_property
    def variant_configurations(self) -> dict[tuple[str, str, float, str], Configuration]:
        """The variants grouped by (model, pruner, rate, format), in grid order, formats in
        the order fp32, fp16, int8."""
        groups: dict[tuple[str, str, float, str], list[dict[str, Any]]] = {}
        for v in self.variants:
            groups.setdefault((v["model"], v["pruner"], v["rate"], v["format"]), []).append(v)
        order = {k[:3]: i for i, k in enumerate(self.configurations)}
        keys = sorted(groups, key=lambda k: (order.get(k[:3], len(order)), _format_order(k[3])))
        return {k: Configuration(*k[:3], kind=groups[k][0]["kind"], metrics=VARIANT_METRICS,
                                 trials=tuple(sorted(groups[k], key=lambda v: v["seed"] or 0)))
                for k in keys}

    @cached_property
    def variant_summaries(self) -> list[dict[str, Any]]:
        """A row per variant configuration (Configuration.row: means over the seeds)."""
        return [c.row() for c in self.variant_configurations.values()]

    @cached_property
    def measuring_nodes(self) -> list[str]:
        """Each node that measured variants, described once (host, CPU, CPUs, architecture)."""
        return list(dict.fromkeys(measured_on(v) for v in self.variants if v.get("node_host")))

    def variant_pareto_set(self) -> list[dict[str, Any]]:
        """Variant configurations on the accuracy front of their size or their latency,
        across prune x quantize; each row gains `fronts`. Best accuracy first."""
        fronts: dict[str, list[str]] = {}
        rows: dict[str, dict[str, Any]] = {}
        for cost in VARIANT_COSTS:
            for v in pareto_front(self.variant_summaries, cost):
                rows[v["key"]] = v
                fronts.setdefault(v["key"], []).append(VARIANT_COST_NAMES[cost])
        return sorted(({**rows[k], "fronts": fronts[k]} for k in rows), key=_accuracy_then_small, reverse=True)


def variant_rows(trials: list[dict[str, Any]], variants: list[dict[str, Any]],
                 measurements: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A row per made variant of a completed trial: the trial's figures, with the variant's
    own accuracy, file size (as `model_size_bytes`, so that size limits and charts read it
    like a trial's) and file path, its latency and peak memory at the smallest batch size of
    `measurements` (one run), and the node that measured them; `vs_fp32_*` compare it with
    its trial's fp32 variant (accuracy in points, latency as a ratio, same node and run),
    `accuracy_drop` with the fp32 variant of its model's baseline of the same seed."""
    # A trial an adaptive search stopped early is no candidate, nor are its variants.
    completed = {t["key"]: t for t in trials if t["status"] == COMPLETED and is_full_budget(t)}
    smallest = min((m["batch_size"] for m in measurements), default=None)
    measured = {m["variant_id"]: m for m in measurements if m["batch_size"] == smallest}
    rows = []
    for v in variants:
        trial = completed.get(v["trial_key"])
        if trial is None or v["error"] or v["accuracy"] is None:
            continue
        m = measured.get(v["id"], {})
        rows.append({**trial, **{k: m.get(k) for k in MEASURED}, "trial_key": trial["key"],
                     "key": f"{trial['key']}.{v['format']}", "format": v["format"], "runtime": v["runtime"],
                     "path": v["path"], "accuracy": v["accuracy"], "trial_accuracy": trial["accuracy"],
                     "model_size_bytes": v["size_bytes"], "compressed_bytes": v["compressed_bytes"],
                     "variant_id": v["id"]})
    fp32 = {r["trial_key"]: r for r in rows if r["format"] == "fp32"}
    base = {(r["model"], r["seed"]): r for r in fp32.values() if r["kind"] == BASELINE}
    for r in rows:
        ref, unpruned = fp32.get(r["trial_key"]), base.get((r["model"], r["seed"]))
        r["vs_fp32_accuracy"] = r["accuracy"] - ref["accuracy"] if ref else None
        r["vs_fp32_latency"] = (r["latency_ms"] / ref["latency_ms"] if ref and r["latency_ms"] is not None
                                and ref["latency_ms"] else None)
        r["accuracy_drop"] = unpruned["accuracy"] - r["accuracy"] if unpruned else None
    return rows


def measured_on(row: dict[str, Any]) -> str:
    """The node that measured a variant row: 'HOST (CPU model, N CPUs, arch)'."""
    if not row.get("node_host"):
        return "not measured"
    cpus = f", {row['cpus']:g} CPUs" if row.get("cpus") is not None else ""
    arch = f", {row['cpu_arch']}" if row.get("cpu_arch") else ""
    return f"{row['node_host']} ({row.get('cpu_model') or 'unknown CPU'}{cpus}{arch})"


def _format_order(name: str) -> int:
    return FORMATS.index(name) if name in FORMATS else len(FORMATS)


def is_full_budget(trial: dict[str, Any]) -> bool:
    """Whether a trial's result is of its whole fine-tune (rows written before budgets were
    recorded have none: they ran in full)."""
    return (trial.get("budget") or 1.0) >= 1.0


def pareto_front(trials: list[dict[str, Any]], cost: str) -> list[dict[str, Any]]:
    """Rows (trials or configurations) no other row beats on both accuracy (higher) and
    `cost` (lower), in increasing cost. Rows missing either figure are left out."""
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
        made, measured = store.variants(sweep["sweep_id"]), store.measurements(sweep["sweep_id"])
    trials = _with_drops(_with_seeds(trials))
    return SweepResults(sweep=sweep, trials=trials, dataset_label=describe(sweep["dataset"]),
                        other_sweeps=others, lock=lock, variants=variant_rows(trials, made, measured))


def _with_seeds(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows written before the seed had a column of its own take it from their spec."""
    out = []
    for t in trials:
        if t.get("seed") is None:
            try:
                t = {**t, "seed": json.loads(t.get("spec_json") or "{}").get("seed")}
            except json.JSONDecodeError:
                pass
        out.append(t)
    return out


def _with_drops(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fill baseline_accuracy and accuracy_drop from the trial's own baseline (its model's,
    of its seed) where the coordinator has not linked them yet (e.g. a pruned trial
    finished first)."""
    base = {(t["model"], t["seed"]): t["accuracy"] for t in trials
            if t["kind"] == BASELINE and t["status"] == COMPLETED and t["accuracy"] is not None}
    out = []
    for t in trials:
        t = dict(t)
        if t["kind"] == BASELINE and t["status"] == COMPLETED and t["accuracy"] is not None:
            t["baseline_accuracy"] = t["baseline_accuracy"] if t["baseline_accuracy"] is not None else t["accuracy"]
            t["accuracy_drop"] = t["accuracy_drop"] if t["accuracy_drop"] is not None else 0.0
        elif t["baseline_accuracy"] is None and (t["model"], t["seed"]) in base:
            t["baseline_accuracy"] = base[(t["model"], t["seed"])]
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
    """'resnet18 l1norm 30%', 'resnet18 baseline'; a variant's row adds its format: '... int8'."""
    label = f"{t['model']} baseline" if t["kind"] == BASELINE else f"{t['model']} {t['pruner']} {fmt.rate(t['rate'])}"
    return f"{label} {t['format']}" if t.get("format") else label
