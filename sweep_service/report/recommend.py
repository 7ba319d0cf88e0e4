"""Pick the most accurate configuration within a device's limits, and say why.

Limits come from the command line or from the sweep config's `constraints`. Every
completed configuration (model, pruner, rate) is a candidate, by its mean over its seeds,
unpruned baselines included (the right answer may be not to prune); with one seed a
configuration is one trial. A sweep that made deployable variants (fp32/fp16/int8 ONNX
files, docs/edge.md) offers those instead, one per (model, pruner, rate, format): the
size is the variant's file, the latency its median on the node that measured it, the
accuracy its own in the runtime it ships in. Trials an adaptive search stopped early are
not candidates, nor their variants: a short fine-tune's accuracy is not comparable with a
full one's (a trial stopped because it was below the front would only be chosen by a
limit that excludes the trials above it, which trained longer). When nothing fits, the
answer says which limit excluded most, which limit alone stands in the way, and which
came closest.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Callable

from sweep_service.report import fmt
from sweep_service.report.results import SweepResults, measured_on, trial_label
from sweep_service.report.stats import CONFIDENCE


@dataclass(frozen=True)
class LimitDef:
    name: str  # as in the config's `constraints` and (with dashes) on the command line
    field: str  # the trial figure it bounds
    upper: bool  # True: figure <= limit; False: figure >= limit
    label: str
    show: Callable[[Any], str]
    scale: float = 1.0  # limit units per figure unit (size: bytes -> MB)


LIMIT_DEFS = (
    LimitDef("max_params", "params_after", True, "parameters", fmt.count),
    LimitDef("max_macs", "macs_after", True, "MACs", fmt.count),
    LimitDef("max_latency_ms", "latency_ms", True, "latency", fmt.ms),
    LimitDef("max_size_mb", "model_size_bytes", True, "size", lambda mb: f"{mb:.3g} MB", 1 / fmt.MB),
    LimitDef("min_accuracy", "accuracy", False, "accuracy", fmt.pct),
)
_DEFS = {d.name: d for d in LIMIT_DEFS}


@dataclass(frozen=True)
class Limits:
    """A device's limits; None means no limit. Sizes in MB of 10^6 bytes."""

    max_params: int | None = None
    max_macs: int | None = None
    max_latency_ms: float | None = None
    max_size_mb: float | None = None
    min_accuracy: float | None = None

    @classmethod
    def from_mapping(cls, data: dict[str, Any] | None) -> "Limits":
        data = data or {}
        return cls(**{f.name: data.get(f.name) for f in fields(cls)})

    def active(self) -> list[tuple[LimitDef, float]]:
        return [(d, getattr(self, d.name)) for d in LIMIT_DEFS if getattr(self, d.name) is not None]

    def __bool__(self) -> bool:
        return bool(self.active())

    def describe(self) -> str:
        return ", ".join(describe_limit(d, v) for d, v in self.active()) or "none"


def describe_limit(d: LimitDef, value: float) -> str:
    return f"{d.label} {'<=' if d.upper else '>='} {d.show(value)}"


@dataclass(frozen=True)
class Miss:
    """A limit a trial breaks, and by how much (a fraction of the limit)."""

    limit: LimitDef
    bound: float
    value: float | None  # in the limit's units; None: the trial lacks the figure

    @property
    def excess(self) -> float:
        if self.value is None:
            return float("inf")
        over = self.value - self.bound if self.limit.upper else self.bound - self.value
        return over / self.bound if self.bound else float("inf")

    def text(self) -> str:
        if self.value is None:
            return f"{self.limit.label} not measured"
        if self.limit.upper:
            by = f"over by {self.excess:.0%}"
        else:  # accuracies: the gap in percentage points reads better than a ratio
            by = f"{(self.bound - self.value) * 100:.1f} pt short"
        return f"{self.limit.label} {self.limit.show(self.value)} (limit {self.limit.show(self.bound)}, {by})"


def misses(trial: dict[str, Any], limits: Limits) -> list[Miss]:
    out = []
    for d, bound in limits.active():
        raw = trial.get(d.field)
        value = None if raw is None else raw * d.scale
        if value is None or (value > bound if d.upper else value < bound):
            out.append(Miss(d, bound, value))
    return out


@dataclass(frozen=True)
class Recommendation:
    results: SweepResults
    limits: Limits
    source: str  # where the limits came from
    eligible: list[dict[str, Any]]  # best first
    excluded_by: dict[str, int] = field(default_factory=dict)  # limit name -> trials it excludes
    only_by: dict[str, int] = field(default_factory=dict)  # limit name -> trials it alone excludes
    closest: list[tuple[dict[str, Any], list[Miss]]] = field(default_factory=list)
    candidates: int = 0  # how many were checked
    variants: bool = False  # the candidates are deployable variants, not trials
    formats: tuple[str, ...] = ()  # the formats the candidates were restricted to, if any

    @property
    def chosen(self) -> dict[str, Any] | None:
        return self.eligible[0] if self.eligible else None

    @property
    def noun(self) -> str:
        """What the candidates are called: variants, trials with one seed each, else configurations."""
        if self.variants:
            return "variants"
        return "configurations" if self.results.spread_measured else "trials"

    def limit_rows(self) -> list[dict[str, Any]]:
        """Per active limit: its text, the chosen trial's figure, and what it excluded."""
        rows = []
        for d, bound in self.limits.active():
            raw = self.chosen.get(d.field) if self.chosen else None
            rows.append(dict(limit=describe_limit(d, bound), name=d.name,
                             value=d.show(raw * d.scale) if raw is not None else "-",
                             excluded=self.excluded_by.get(d.name, 0),
                             only=self.only_by.get(d.name, 0)))
        return rows

    def why(self) -> str:
        mean = " by mean accuracy" if self.results.spread_measured else ""
        noun = f"{'/'.join(self.formats)} {self.noun}" if self.formats else self.noun
        if not self.limits:
            return f"the most accurate{mean} of all {self.candidates} completed {noun} (no limits given)"
        return (f"the most accurate{mean} of the {len(self.eligible)} of {self.candidates} completed "
                f"{noun} that meet every limit")

    def most_excluding(self) -> str | None:
        if not self.excluded_by:
            return None
        name = max(self.excluded_by, key=lambda n: (self.excluded_by[n], self.only_by.get(n, 0)))
        return describe_limit(_DEFS[name], getattr(self.limits, name))

    def lines(self, runners_up: int = 3) -> list[str]:
        """The answer as text, as `recommend` prints it."""
        r = self.results
        head = (f"sweep {r.sweep_id} ({r.sweep.get('status')}), data: {r.dataset_label}, "
                f"weights: {r.sweep.get('weights')}")
        out = [head, f"limits ({self.source}): {self.limits.describe()}"]
        pending = r.counts.get("pending", 0) + r.counts.get("running", 0)
        if pending:
            out.append(f"note: {pending} trials are not finished yet; the answer may change")
        if not r.completed:
            out.append("no completed trial yet: nothing to recommend")
            return out
        if r.stopped_early:
            out.append(f"note: {len(r.stopped_early)} trials the adaptive search stopped early are not candidates: "
                       "a short fine-tune's accuracy is not comparable with a full one's")
        if self.variants:
            out.append("candidates: the deployable variants of the completed trials (size: the variant's file; "
                       "latency: its median on the node that measured it; accuracy: in its runtime)")
        if r.spread_measured:
            out.append(f"figures: mean ± half-width of the {CONFIDENCE:.0%} interval over each configuration's seeds")
        else:
            out.append(f"{r.no_spread_reason()}, so differences of about a point may be noise")
        chosen = self.chosen
        if chosen is None:
            out.append(f"NO completed {self.noun[:-1]} meets all the limits ({self.candidates} checked).")
            out.append(f"excluded by each limit (one of the {self.noun} may break several):")
            for row in self.limit_rows():
                alone = f", {row['only']} of them by this limit alone" if row["only"] else ""
                out.append(f"  {row['limit']:<28} excludes {row['excluded']:>4} {self.noun}{alone}")
            out.append(f"the limit that excludes most: {self.most_excluding()}")
            if self.closest:
                out.append("closest candidates (smallest total excess over the limits):")
                for t, miss in self.closest:
                    out.append(f"  {trial_label(t):<30} {accuracy_text(t):>6}  "
                               + "; ".join(m.text() for m in miss))
            return out
        keys = [k.split(".")[0] for k in chosen.get("keys") or [chosen["key"]]]
        which = f"trial {keys[0]}" if len(keys) == 1 else f"mean of {len(keys)} seeds: trials {', '.join(keys)}"
        out.append(f"recommended: {trial_label(chosen)}  ({which})")
        out.append(f"why: {self.why()}")
        out.append("  " + summary(chosen))
        if self.variants:
            out.append(f"  format: {chosen['format']} in {chosen.get('runtime') or 'an unknown runtime'}; "
                       f"file: {chosen.get('path') or '-'}")
            out.append(f"  latency measured on {measured_on(chosen)}, batch {chosen.get('batch_size') or '-'}, "
                       f"{chosen.get('threads') or '-'} thread(s)")
        for row in self.limit_rows():
            out.append(f"  {row['limit']:<28} ok: {row['value']:<10} (this limit excludes "
                       f"{row['excluded']} {self.noun})")
        others = self.eligible[1:1 + runners_up]
        if others:
            out.append("next best within the limits:" if self.limits else "next best:")
            for t in others:
                out.append(f"  {trial_label(t):<30} {summary(t)}")
        return out


def _spread(t: dict[str, Any], metric: str):
    """The row's interval of `metric`, if it is a configuration's over two seeds or more."""
    estimate = (t.get("spread") or {}).get(metric)
    return estimate if estimate is not None and estimate.measured else None


def accuracy_text(t: dict[str, Any]) -> str:
    """A row's accuracy: '91.2 ± 0.8%' for a configuration over several seeds, else '91.2%'."""
    estimate = _spread(t, "accuracy")
    return fmt.pct_pm(estimate.mean, estimate.half_width) if estimate else fmt.pct(t.get("accuracy"))


def summary(t: dict[str, Any]) -> str:
    drop = t.get("accuracy_drop")
    spread = _spread(t, "accuracy_drop")
    change = fmt.points_pm(-drop, spread.half_width) if spread and drop is not None else fmt.points(
        None if drop is None else -drop)
    baseline = "the unpruned fp32 file" if t.get("format") else "baseline"
    vs_base = f" ({change} vs {baseline})" if drop is not None and t.get("kind") != "baseline" else ""
    seeds = f" over {t['n']} seeds" if _spread(t, "accuracy") else ""
    text = (f"accuracy {accuracy_text(t)}{seeds}{vs_base}, {fmt.pruning(t)}, "
            f"params {fmt.count(t.get('params_after'))}, MACs {fmt.count(t.get('macs_after'))}, "
            f"latency {fmt.ms(t.get('latency_ms'))}, ")
    if not t.get("format"):
        return text + f"size {fmt.size(t.get('model_size_bytes'))}"
    peak = t.get("peak_rss_mb")
    return (text + f"{t['format']} file {fmt.size(t.get('model_size_bytes'))} "
            f"(deflated {fmt.size(t.get('compressed_bytes'))}), peak memory "
            + ("-" if peak is None else f"{peak:.0f} MB"))


def recommend(results: SweepResults, limits: Limits | None = None, *, source: str = "given",
              closest: int = 3, formats: tuple[str, ...] = ()) -> Recommendation:
    """The most accurate completed configuration within `limits` (default: the sweep config's
    `constraints`) among the sweep's deployable variants (only `formats`, if given), or its
    trials if it made none; ties go to fewer parameters, then lower latency. `source` says
    where the limits came from, for the explanation."""
    if limits is None:
        limits = Limits.from_mapping(results.config.get("constraints"))
        source = "from the sweep config" if limits else "none given"
    variants = bool(results.variants)
    pool = results.variant_summaries if variants else results.summaries
    if formats:
        pool = [t for t in pool if t.get("format") in formats]
    checked = [(t, misses(t, limits)) for t in pool]
    eligible = sorted((t for t, m in checked if not m), key=_rank, reverse=True)
    excluded_by: dict[str, int] = {}
    only_by: dict[str, int] = {}
    for _, miss in checked:
        for m in miss:
            excluded_by[m.limit.name] = excluded_by.get(m.limit.name, 0) + 1
        if len(miss) == 1:
            only_by[miss[0].limit.name] = only_by.get(miss[0].limit.name, 0) + 1
    near = []
    if not eligible:
        near = sorted(checked, key=lambda tm: (sum(x.excess for x in tm[1]), len(tm[1]),
                                               -(tm[0].get("accuracy") or 0)))
        near = near[:closest]
    return Recommendation(results, limits, source, eligible, excluded_by, only_by, near, candidates=len(pool),
                          variants=variants, formats=tuple(formats))


def _rank(t: dict[str, Any]) -> tuple:
    return (t.get("accuracy") if t.get("accuracy") is not None else -1.0,
            -(t.get("params_after") or float("inf")), -(t.get("latency_ms") or float("inf")))
