"""The static HTML report: index.html beside its PNG charts and a CSV of the trials.

`write_report` reads the database, redraws the charts whose data changed, and replaces
each file atomically, so it is safe to call after every trial while a browser (or the
Docker `report` service) shows the folder. All links are relative: the folder can be
copied, served by any static server, or opened from disk.
"""
from __future__ import annotations

import functools
import json
import os
import struct
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from sweep_service.files import write_atomic
from sweep_service.provenance import describe_commit
from sweep_service.report import fmt
from sweep_service.report.charts import Chart, render_charts
from sweep_service.report.export import export_text
from sweep_service.report.recommend import Limits, accuracy_text, recommend
from sweep_service.report.results import SweepResults, is_full_budget, load_results, measured_on, trial_label
from sweep_service.report.stats import CONFIDENCE, Estimate
from sweep_service.report.status import STATUS_FILE
from sweep_service.spec import BASELINE, COMPLETED, PENDING, RUNNING

# While the sweep runs, the page reads status.json (sweep_service.report.status)
# this often, reloads itself when a newer report was written, and stops, saying so, when
# the coordinator has ended or stopped answering.
REFRESH_S = 15
CSV_NAME = "trials.csv"


@dataclass(frozen=True)
class Column:
    title: str
    key: str
    show: Callable[[Any], str]
    hint: str = ""
    minor: bool = False  # timings and bookkeeping: shown smaller
    # A mean and its interval's half-width as text, for configuration rows over several seeds.
    show_pm: Callable[[Any, Any], str] | None = None
    optional: bool = False  # shown only if some row has the figure (older sweeps lack it)
    per_trial: bool = False  # a trial's own bookkeeping: not in tables of configurations


COLUMNS = (
    Column("model", "model", str),
    Column("pruner", "pruner", str),
    Column("rate", "rate", fmt.rate, "requested pruning rate: share of filters asked of each selected layer"),
    Column("pruning", "pruning", str, "what pruning did: parameters removed (structured) or weights zeroed "
                                      "(unstructured: nothing removed)"),
    Column("accuracy", "accuracy", fmt.pct, "top-1 accuracy on the test split, after fine-tuning",
           show_pm=fmt.pct_pm),
    Column("vs base", "accuracy_change", fmt.points, "accuracy minus the unpruned baseline's (same seed), in points",
           show_pm=fmt.points_pm),
    Column("params", "params_after", fmt.count, "parameters after pruning"),
    Column("params −", "param_reduction", lambda v: fmt.pct(v, 1), "share of parameters removed"),
    Column("MACs", "macs_after", fmt.count, "multiply-accumulates per image"),
    Column("MACs −", "mac_reduction", lambda v: fmt.pct(v, 1), "share of MACs removed"),
    Column("size", "model_size_bytes", fmt.size, "saved model file, MB of 10^6 bytes"),
    Column("latency", "latency_ms", fmt.ms, "median CPU latency, batch 1", show_pm=fmt.ms_pm),
    Column("before FT", "accuracy_pruned", fmt.pct, "top-1 accuracy right after pruning, before fine-tuning",
           show_pm=fmt.pct_pm, optional=True),
    Column("sparsity", "channel_sparsity", lambda v: fmt.pct(v, 1),
           "achieved channel sparsity: filters removed ÷ filters of the selected layers", show_pm=fmt.pct_pm,
           optional=True),
    Column("prune", "time_prune_s", fmt.seconds, "time to compute the masks", True),
    Column("speedup", "time_speedup_s", fmt.seconds, "time to remove the masked channels", True),
    Column("fine-tune", "time_finetune_s", fmt.seconds, "fine-tuning time", True),
    Column("eval", "time_eval_s", fmt.seconds, "evaluation time", True),
    Column("measure", "time_measure_s", fmt.seconds, "time to count MACs and measure latency", True),
    Column("total", "time_total_s", fmt.seconds, "trial time on the worker", True),
    Column("wait", "time_wait_s", fmt.seconds, "time from submission to start", True),
    Column("worker", "worker_host", lambda v: v or "-", "host that ran the trial", True, per_trial=True),
    Column("RSS", "worker_rss_mb", lambda v: "-" if v is None else f"{v:.0f} MB", "worker memory", True,
           per_trial=True),
    Column("tries", "attempts", lambda v: "-" if v is None else str(v), "attempts", True, per_trial=True),
    Column("key", "key", str, "trial key (hash of its spec)", True, per_trial=True),
)
BUDGET_COLUMN = Column("fine-tuned", "budget", fmt.budget,
                       "share of its fine-tune the trial trained: an adaptive sweep stops trials that cannot "
                       "reach the Pareto front early; their accuracy is not comparable with a full fine-tune's")
SEED_COLUMN = Column("seed", "seed", str, "the trial's seed (its baseline has the same)")
SEEDS_COLUMN = Column("seeds", "n", str, "how many seeds the figures are the mean of")


@functools.lru_cache(maxsize=1)
def _environment() -> Environment:
    env = Environment(loader=PackageLoader("sweep_service.report", "templates"),
                      autoescape=select_autoescape(["html", "j2"]), undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update(pct=fmt.pct, count=fmt.count, ms=fmt.ms, size=fmt.size, seconds=fmt.seconds,
                       when=fmt.when, rate=fmt.rate, label=trial_label, accuracy=accuracy_text)
    return env


def _cell(value: Any, text: str, minor: bool, href: str | None = None) -> dict[str, Any]:
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    return dict(text=text, sort=value if numeric else (value or ""), minor=minor, href=href)


def _table(trials: list[dict[str, Any]], extra: Column | None = None, *, summary: bool = False,
           seeds: bool = False) -> dict[str, Any]:
    """Headers and rows of a table of trials, or with `summary` of configurations (rows of
    SweepResults.summaries: means, with mean ± half-width where an interval was measured):
    the main figures, the seed(s) if `seeds`, then `extra` (a column of values the rows
    carry under its key), then timings and bookkeeping."""
    main = [c for c in COLUMNS if not c.minor
            and (not c.optional or any(t.get(c.key) is not None for t in trials))]
    minor = [c for c in COLUMNS if c.minor and not (summary and c.per_trial)]
    columns = main + ([SEEDS_COLUMN if summary else SEED_COLUMN] if seeds else []) + ([extra] if extra else []) + minor
    rows = []
    for t in trials:
        spread = dict(t.get("spread") or {})
        if "accuracy_drop" in spread:
            drop = spread["accuracy_drop"]
            spread["accuracy_change"] = Estimate(-drop.mean, drop.n, drop.half_width, drop.sd)
        t = {**t, "accuracy_change": None if t.get("accuracy_drop") is None else -t["accuracy_drop"],
             "pruning": fmt.pruning(t)}
        if t["kind"] == BASELINE:
            t["pruner"] = "baseline"
        cells = [_cell(t.get(c.key), _text(c, t.get(c.key), spread.get(c.key)), c.minor) for c in columns]
        short = t.get("status") == COMPLETED and not is_full_budget(t)
        rows.append(dict(cells=cells, key=t["key"], status=t["status"], kind=t["kind"] + (" short" if short else "")))
    return dict(columns=columns, rows=rows)


def _text(column: Column, value: Any, estimate: Estimate | None) -> str:
    """A cell's text: "-" for no value; mean ± half-width where the seeds measured a spread."""
    if value is None:
        return "-"
    if column.show_pm and estimate is not None and estimate.measured:
        return column.show_pm(estimate.mean, estimate.half_width)
    return column.show(value)


def _variant_table(results: SweepResults, rows: list[dict[str, Any]], out_dir: Path, *,
                   fronts: bool = False) -> dict[str, Any]:
    """Headers and rows of a table of variant configurations (SweepResults.variant_summaries),
    each linking its .onnx file (relative to the report folder)."""
    columns = [
        Column("model", "model", str), Column("pruner", "pruner", str), Column("rate", "rate", fmt.rate),
        Column("pruning", "pruning", str, "parameters removed (structured) or weights zeroed (unstructured)"),
        Column("format", "format", str, "fp32, fp16 or int8 (ONNX Runtime static QDQ, calibrated on training batches)"),
        Column("accuracy", "accuracy", fmt.pct, "top-1 accuracy on the test split, run in ONNX Runtime",
               show_pm=fmt.pct_pm),
        Column("vs fp32", "vs_fp32_accuracy", fmt.points, "accuracy minus the same trial's fp32 variant's, in points",
               show_pm=fmt.points_pm),
        Column("size", "model_size_bytes", fmt.size, "the .onnx file, MB of 10^6 bytes"),
        Column("deflated", "compressed_bytes", fmt.size, "the file deflated (zip/gzip level 6)"),
        Column("latency", "latency_ms", fmt.ms, "median latency on the measuring node", show_pm=fmt.ms_pm),
        Column("p10-p90", "latency_range", str, "10th to 90th percentile of the timed calls"),
        Column("vs fp32 ×", "vs_fp32_latency", lambda v: f"{v:.2f}×", "latency ÷ the same trial's fp32 variant's, "
                                                                     "same node and run"),
        Column("peak", "peak_rss_mb", lambda v: f"{v:.0f} MB", "peak resident memory of a fresh process loading "
                                                               "and running it"),
        Column("measured on", "measured_on", str, "the node and CPU that measured it"),
    ]
    if fronts:
        columns.append(Column("front", "front", str, "the costs for which no other variant is both more accurate "
                                                     "and cheaper (by the means)"))
    columns.append(Column("file", "file", str, "the variant's ONNX file (of the first seed)"))
    out = []
    for v in rows:
        v = {**v, "pruning": fmt.pruning(v), "measured_on": measured_on(v), "front": ", ".join(v.get("fronts", [])),
             "pruner": "baseline" if v["kind"] == BASELINE else v["pruner"],
             "latency_range": "-" if v.get("latency_p10_ms") is None else
             f"{v['latency_p10_ms']:.3g}-{v['latency_p90_ms']:.3g}",
             "file": Path(v["path"]).name if v.get("path") else None}
        spread = v.get("spread") or {}
        cells = []
        for c in columns:
            href = _relative_link(Path(v["path"]), out_dir) if c.key == "file" and v.get("path") else None
            cells.append(_cell(v.get(c.key), _text(c, v.get(c.key), spread.get(c.key)), False, href))
        out.append(dict(cells=cells, key=v["key"], status=v["status"], kind=v["kind"]))
    return dict(columns=columns, rows=out)


def _relative_link(path: Path, out_dir: Path) -> str:
    """A link from the report folder to a file (the variants sit in ../models beside it)."""
    return urllib.parse.quote(Path(os.path.relpath(path.resolve(), out_dir.resolve())).as_posix())


def _pairwise(results: SweepResults) -> list[dict[str, Any]]:
    """Per model, each pair of pruners at each rate by their paired accuracy difference."""
    out = []
    for model in results.models:
        rows = []
        for c in results.pairwise(model):
            d = c.difference
            rows.append(dict(
                rate=c.rate, rate_text=fmt.rate(c.rate), pair=f"{c.first} − {c.second}",
                difference=d.mean, difference_text=fmt.points(d.mean),
                interval="-" if not d.measured else f"{fmt.points(d.low)} to {fmt.points(d.high)}",
                n=d.n, verdict=c.verdict,
                state="unmeasured" if not d.measured else "noise" if d.contains(0.0) else "clear"))
        if rows:
            out.append(dict(model=model, rows=rows))
    return out


def _spread_text(results: SweepResults) -> str:
    """What the figures of configurations are: means with intervals, or single runs."""
    seeds = results.seeds
    if not results.spread_measured and len(seeds) > 1:
        return (f"Each configuration (model, pruner, rate) runs with {len(seeds)} seeds "
                f"({', '.join(map(str, seeds))}), but none has two of them completed yet: its figures "
                "have no interval yet.")
    if not results.spread_measured:
        one = f"seed {seeds[0]}" if len(seeds) == 1 else "one seed each"
        return (f"Each configuration (model, pruner, rate) ran once ({one}): no spread was measured, "
                "so no figure here has an interval, and a difference of a point between two pruners "
                "may be noise. Set `repeats: 3` (or `seeds: [0, 1, 2]`) in the config to measure it.")
    counts = sorted({len(c.trials) for c in results.configurations.values()})
    many = str(counts[0]) if len(counts) == 1 else f"{counts[0]} to {counts[-1]}"
    return (f"Each configuration (model, pruner, rate) ran with {many} seeds ({', '.join(map(str, seeds))}); "
            f"its figures are means, written mean ± half-width of the {CONFIDENCE:.0%} Student-t interval, "
            "and the charts draw those intervals.")


def _budget_text(results: SweepResults) -> str:
    """The training each trial had: why a pruned model can beat its baseline."""
    config = results.config
    base, tune = config.get("baseline_epochs"), config.get("finetune_epochs")
    if base is None or tune is None:
        return ""

    def epochs(n: int) -> str:
        return f"{n} epoch" + ("" if n == 1 else "s")

    start = {"imagenet": "the ImageNet-pretrained weights", "none": "random initialisation"}.get(
        results.sweep.get("weights"), "its weights")
    if config.get("prune_from") == "pretrained":
        return (f"Training budgets: each baseline trains {epochs(base)} from {start}; each pruned trial "
                f"prunes the unpruned model of {start} and fine-tunes {epochs(tune)}.")
    return (f"Training budgets: each baseline trains {epochs(base)} from {start}; each pruned trial "
            f"prunes its baseline and fine-tunes {epochs(tune)} more, {epochs(base + tune)} in all. A pruned "
            "model that ends up more accurate than its baseline (a negative drop) gained more from its "
            "extra training than pruning cost it.")


def _search_text(results: SweepResults) -> str:
    """What an adaptive search left out, and how the report treats its short-budget results."""
    settings = results.adaptive
    if settings is None:
        return ""
    floors = []
    if settings.get("min_accuracy") is not None:
        floors.append(f"min_accuracy {fmt.pct(settings['min_accuracy'])}")
    if settings.get("max_drop") is not None:
        floors.append(f"max_drop {settings['max_drop'] * 100:.3g} points from the baseline")
    floor = " and ".join(floors) if floors else "chance level (no floor set)"
    rungs = settings.get("rungs", [0.25])
    rung_text = ("rungs at " + ", ".join(fmt.budget(r) for r in rungs) + " of each fine-tune") if rungs \
        else "no rungs"
    front = {"params": "parameters", "macs": "MACs"}.get(settings.get("front", "params"), settings.get("front"))
    skipped, stopped = len(results.skipped), len(results.stopped_early)
    return (f"Adaptive search: lines stop at the floor ({floor}); {rung_text}, against the front of accuracy vs "
            f"{front}{'; the knee refined' if settings.get('refine') else ''}. {skipped} trial"
            f"{'' if skipped == 1 else 's'} skipped (its line fell below the floor) and {stopped} stopped early "
            "(below the front after a short fine-tune): see Skipped and stopped early. A short fine-tune's accuracy "
            "is not comparable with a full one's, so those results are drawn hollow in the charts and left out of "
            "the means, the Pareto set, the best per model and the recommendation; skipped trials are not drawn.")


def _search_rows(results: SweepResults) -> list[dict[str, Any]]:
    """The trials an adaptive search skipped or stopped early, with what they had and why."""
    out = []
    for t in _in_grid_order(results, results.skipped + results.stopped_early):
        if t["status"] == COMPLETED:
            outcome = f"stopped at {fmt.budget(t.get('budget'))} of its fine-tune"
            rung = f" (rung {t['rung']})" if t.get("rung") else ""
            outcome += rung
        else:
            outcome = "skipped: not run"
        out.append(dict(model=t["model"], pruner=t["pruner"], rate=t["rate"], seed=t.get("seed"),
                        status=t["status"], outcome=outcome, budget=t.get("budget") or 0.0,
                        accuracy=t.get("accuracy"), reason=t.get("stop_reason") or "no reason recorded"))
    return out


def _in_grid_order(results: SweepResults, trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Models and pruners in config order, each model's baseline first, rates rising."""
    pruners = {p: i for i, p in enumerate(results.pruners)}
    models = {m: i for i, m in enumerate(results.models)}
    return sorted(trials, key=lambda t: (models.get(t["model"], len(models)),
                                         -1 if t["kind"] == BASELINE else pruners.get(t["pruner"], len(pruners)),
                                         t["rate"]))


def _png_size(path: Path) -> tuple[int, int]:
    with open(path, "rb") as f:
        head = f.read(24)
    return struct.unpack(">II", head[16:24])


def _chart_view(chart: Chart, out: Path) -> dict[str, Any]:
    width, height = _png_size(out / chart.filename)
    # ?v=digest: a browser reloading the page fetches a chart again only when it changed.
    return dict(src=f"{chart.filename}?v={chart.digest}", title=chart.title, caption=chart.caption,
                width=width, height=height, model=chart.model, file=chart.filename, group=chart.group)


def _duration(sweep: dict[str, Any]) -> str:
    start, end = sweep.get("started_at"), sweep.get("finished_at")
    if start and end and end >= start:
        return fmt.seconds((end - start).total_seconds())
    return "-"


def render_page(results: SweepResults, charts: list[Chart], out_dir: Path) -> str:
    """The page's HTML for `results`, showing `charts` (PNG files already in `out_dir`)."""
    counts = results.counts
    total = sum(counts.values())
    config_limits = Limits.from_mapping(results.config.get("constraints"))
    rec = recommend(results, config_limits, source="from the sweep config") if config_limits else None
    pareto = results.pareto_set()
    unfinished = [t for t in results.trials if t["status"] in (PENDING, RUNNING)]
    several = results.spread_measured
    generated = time.time()
    views = [_chart_view(c, out_dir) for c in charts]
    context = dict(
        r=results,
        title=f"Pruning sweep {results.sweep.get('name') or results.sweep_id}",
        live=dict(sweep=results.sweep_id, generated=generated, every=REFRESH_S, file=STATUS_FILE)
        if results.running else None,
        abandoned=results.abandoned,
        heartbeat=results.lock["heartbeat_at"] if results.lock else None,
        generated=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(generated)),
        counts=counts, total=total,
        share={k: (100.0 * v / total if total else 0.0) for k, v in counts.items()},
        weights={"imagenet": "ImageNet-pretrained (torchvision)",
                 "none": "none: trained from random initialisation"}.get(results.sweep.get("weights"),
                                                                        results.sweep.get("weights")),
        synthetic=results.sweep.get("dataset") == "synthetic",
        duration=_duration(results.sweep),
        rate_charts=[v for v in views if v["group"] == "rate"],
        tradeoff_charts=[v for v in views if v["group"] == "tradeoff"],
        model_charts=[v for v in views if v["group"] == "model"],
        edge_charts=[v for v in views if v["group"] == "edge"],
        variants=_variant_table(results, results.variant_summaries, out_dir) if results.variants else None,
        variant_pareto=_variant_table(results, results.variant_pareto_set(), out_dir, fronts=True)
        if results.variants else None,
        best=_table(results.best_per_model(), summary=True, seeds=several),
        pareto=_table([{**t, "front": ", ".join(t["fronts"])} for t in pareto],
                      Column("front", "front", str, "the costs for which no other configuration is "
                                                    "both more accurate and cheaper (by the means)"),
                      summary=True, seeds=several),
        completed=_table(_in_grid_order(results, results.completed), BUDGET_COLUMN if results.stopped_early else None,
                         seeds=len(results.seeds) > 1),
        search_text=_search_text(results),
        search_rows=_search_rows(results),
        pairwise=_pairwise(results),
        spread_text=_spread_text(results),
        budget_text=_budget_text(results),
        commit=describe_commit(results.provenance, full=True) if results.provenance else "not recorded",
        worker_differences=results.worker_version_differences(),
        failed=[dict(model=t["model"], pruner=t["pruner"], rate=t["rate"], kind=t["kind"],
                     attempts=t.get("attempts"), host=t.get("worker_host") or "-",
                     first=_first_line(t.get("error")), error=(t.get("error") or "").strip())
                for t in _in_grid_order(results, results.failed)],
        unfinished=unfinished,
        rec=rec, rec_table=_table(rec.eligible[:5], summary=True, seeds=several) if rec else None,
        config_text=json.dumps(results.config, indent=2, sort_keys=True),
        csv_name=CSV_NAME,
        confidence=CONFIDENCE,
    )
    return _environment().get_template("report.html.j2").render(**context)


def _first_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[0] if lines else "no error text recorded"


def write_report(db_path: str | Path, out_dir: str | Path, sweep_id: str | None = None) -> Path:
    """Write `out_dir`/index.html with its charts and CSV for a sweep (the latest if
    `sweep_id` is None) of the database at `db_path`; returns the path of index.html.

    Works for a finished or a running sweep (the page then shows progress and reloads
    itself). Only charts whose data changed are redrawn, and every file is replaced
    atomically, so calling this after every trial is cheap and safe.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = load_results(db_path, sweep_id)
    charts = render_charts(results, out)
    write_atomic(out / CSV_NAME, export_text(results, "csv").encode())
    index = out / "index.html"
    # The page goes last: when it names a chart, the chart is there.
    write_atomic(index, render_page(results, charts, out).encode())
    return index
