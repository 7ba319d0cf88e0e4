"""The report's charts: matplotlib figures drawn off-screen (Agg) and saved as PNG.

Each chart is a pure function of `SweepResults`. `render_charts` redraws only the charts
whose inputs changed since the last call (a digest per file, kept in a manifest beside
them), so a report refreshed after every trial costs about one chart, and writes each
file atomically (temporary file + rename): a browser never reads half a PNG.

Every chart names the data set and the weights, draws each model with the same colour
and marker everywhere, keeps its legend outside the plot, labels its axes with units,
and leaves out failed trials. A point is a configuration (model, pruner, rate): the mean
over its seeds, with its 95 % interval as a band or an error bar where two seeds or more
ran (sweep_service.report.stats). A trial an adaptive search stopped early is drawn on its
own as a hollow marker (its short fine-tune is not comparable with a full one, so it joins
no line, bar, mean or front); a skipped trial is not drawn. Past MANY_RATES rates, bars give way to lines and the
rate axis keeps a few round ticks, so that a fine grid stays readable and quick to draw.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogFormatter, MaxNLocator
from matplotlib.transforms import Bbox

from sweep_service.files import write_atomic
from sweep_service.report import fmt
from sweep_service.report.results import (
    COST_NAMES,
    SweepResults,
    pareto_front,
    trial_label,
)
from sweep_service.report.stats import Estimate
from sweep_service.spec import BASELINE, PRUNED

log = logging.getLogger(__name__)

CHART_VERSION = 6  # bump to redraw every chart after a change of style
MANIFEST = ".charts.json"
DPI = 100
MODEL_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                 "#7f7f7f", "#bcbd22", "#17becf")
MODEL_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">", "p")
PRUNER_COLOURS = ("#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#edc948", "#76b7b2")
NUM_CLASSES = 10  # CIFAR-10 and its synthetic twin
MANY_RATES = 12  # past this many rates: lines instead of bars, thinned rate ticks, no markers
FRONT_LABELS = 40  # at most this many Pareto-front points are named on a chart
RATE_LABEL = "requested pruning rate (%)"  # the captions say: of each selected layer's filters
SPARSITY_LABEL = "achieved channel sparsity (%)"  # the caption says: filters removed ÷ filters of the selected layers
BAND_ALPHA = 0.18
SHORT_LABEL = "short fine-tune (stopped early)"
SHORT_GID = "short-budget"  # names the hollow markers of short-budget results in a figure
FORMAT_COLOURS = {"fp32": "#1f77b4", "fp16": "#2ca02c", "int8": "#d62728"}
# How a variant's point is filled says what pruning did: nothing (hollow), parameters
# removed (filled), weights zeroed (half-filled).
PRUNING_FILL = {"baseline": ("none", "unpruned baseline"), "structured": ("full", "pruned: parameters removed"),
                "unstructured": ("left", "pruned: weights zeroed (none removed)")}
# Sizes for charts shown at about 0.6-0.8 of their pixel size on a laptop screen.
STYLE = {"font.size": 11, "axes.titlesize": 13, "axes.labelsize": 11.5, "xtick.labelsize": 10.5,
         "ytick.labelsize": 10.5, "legend.fontsize": 11}


@dataclass(frozen=True)
class Chart:
    """A chart file of the report and what the page says about it."""

    filename: str
    group: str  # "rate", "tradeoff" or "model": where the page shows it
    title: str
    caption: str
    digest: str = ""
    model: str | None = None  # set for the per-model charts


# styling --------------------------------------------------------------------------------
def model_style(results: SweepResults, model: str) -> dict[str, Any]:
    i = results.models.index(model)
    colour = MODEL_COLOURS[i % len(MODEL_COLOURS)]
    # Past ten models the colours repeat; the marker and dash pattern keep them apart.
    dashes = "-" if i < len(MODEL_COLOURS) else "--"
    return dict(color=colour, marker=MODEL_MARKERS[i % len(MODEL_MARKERS)], linestyle=dashes)


def _model_legend(results: SweepResults, models: list[str]) -> list[Line2D]:
    return [Line2D([], [], label=m, markersize=7, linewidth=2, **model_style(results, m)) for m in models]


def _subtitle(results: SweepResults, *, short: bool = False) -> str:
    weights = {"imagenet": "ImageNet-pretrained", "none": "random init (no pretrained weights)"}
    w = weights.get(results.sweep.get("weights"), results.sweep.get("weights"))
    # Not the trial count: it would change every chart after every trial.
    partial = "  ·  partial results (sweep running)" if results.running else ""
    if short:
        return f"data: {results.dataset_label}\nweights: {w}{partial}"
    return f"data: {results.dataset_label}  ·  weights: {w}  ·  sweep {results.sweep_id}{partial}"


def _short(results: SweepResults, metric: str, **where: Any) -> list[dict[str, Any]]:
    """The short-budget results (stopped early) matching `where` that have `metric`."""
    return [t for t in results.stopped_early
            if t.get(metric) is not None and all(t.get(k) == v for k, v in where.items())]


def _draw_short(ax, xs: list[float], ys: list[float], colour: str, marker: str = "o", size: float = 40) -> None:
    """Short-budget results as hollow markers, joined to nothing."""
    if xs:
        ax.scatter(xs, ys, marker=marker, s=size, facecolors="none", edgecolors=colour, linewidths=1.3,
                   alpha=0.9, zorder=3, gid=SHORT_GID)


def _short_handle() -> Line2D:
    return Line2D([], [], marker="o", linestyle="none", markerfacecolor="none", markeredgecolor="#555",
                  markersize=7, label=SHORT_LABEL)


def _pct_axis(axis) -> None:
    # As many decimals as a tick needs: a tick at 92.5 % reads "92.5%", not "92%".
    axis.set_major_formatter(FuncFormatter(lambda v, _: fmt.pct_tick(v)))


def _header(fig: Figure, title: str, subtitle: str, *, lines: int = 0) -> None:
    """Title and subtitle at the top-left (plus room for `lines` more lines of legend
    under them); the plots fill what is left."""
    height = fig.get_figheight()
    lines += subtitle.count("\n") + 1
    fig.text(0.01, 1 - 0.12 / height, title, ha="left", va="top", fontsize=15, fontweight="bold")
    fig.text(0.01, 1 - 0.45 / height, subtitle, ha="left", va="top", fontsize=10.5, color="#444",
             linespacing=1.4)
    fig.tight_layout(rect=(0, 0, 1, 1 - (0.6 + 0.2 * lines) / height))


def _legend_right(fig: Figure, handles: list, title: str) -> None:
    """The legend in a column right of the plots, outside all of them."""
    top = max(ax.get_position().y1 for ax in fig.axes if ax.get_visible())
    fig.legend(handles=handles, title=title, loc="upper left", bbox_to_anchor=(1.0, top),
               frameon=False, title_fontsize=11)


def _save(fig: Figure, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.2)
    write_atomic(path, buffer.getvalue())


def _panel_grid(fig: Figure, n: int, max_cols: int = 3, **kw) -> list:
    """`n` axes in rows of at most `max_cols`, the unused slots hidden."""
    cols = min(n, max_cols)
    axes = fig.subplots(math.ceil(n / cols), cols, squeeze=False, **kw)
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.set_visible(False)
    return flat[:n]


def _rate_tick(value: float, _position=None) -> str:
    if value < -1e-9 or value > 1 + 1e-9:
        return ""
    return "base" if abs(value) < 1e-9 else fmt.rate(value)


def _rate_axis(ax, rates: list[float]) -> None:
    """Rates on x, the unpruned baseline at 0 ("base"): a tick per rate, or past MANY_RATES
    a few round ones."""
    if len(rates) <= MANY_RATES:
        ticks = [0.0, *rates]
        ax.set_xticks(ticks)
        ax.set_xticklabels([_rate_tick(t) for t in ticks])
    else:
        ax.xaxis.set_major_locator(MaxNLocator(nbins=8, steps=[1, 2, 2.5, 5, 10]))
        ax.xaxis.set_major_formatter(FuncFormatter(_rate_tick))
    ax.set_xlim(-0.03, max([0.0, *rates]) + 0.03)
    ax.grid(True, alpha=0.3)


def _line_with_band(ax, points: list[tuple[float, Estimate]], *, markers: bool, band: bool = True,
                    **style) -> None:
    """The means as a line; where two or more seeds ran, their 95 % intervals as a band."""
    xs = [x for x, _ in points]
    ax.plot(xs, [e.mean for _, e in points], linewidth=2, markersize=6 if markers else 0, alpha=0.9, **style)
    if band and any(e.measured for _, e in points):
        measured = [e.measured for _, e in points]
        ax.fill_between(xs, [e.low if e.measured else e.mean for _, e in points],
                        [e.high if e.measured else e.mean for _, e in points],
                        where=measured, color=style["color"], alpha=BAND_ALPHA, linewidth=0)


def _spread_note(results: SweepResults, shown_as: str = "shaded band") -> str:
    """What a chart's points are: means over seeds with 95 % intervals, or single runs."""
    if results.spread_measured:
        return f"mean over {_seed_count(results)} seeds, {shown_as}: 95 % interval"
    return results.no_spread_reason()


def _seed_count(results: SweepResults) -> str:
    counts = sorted({len(c.trials) for c in results.configurations.values()})
    return str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"


# charts against the pruning rate (the reference study's Figures 2 and 3) ----------------
def _vs_rate(results: SweepResults, metric: str, title: str, ylabel: str, *, diagonal: bool,
             baseline_metric: str | None = None) -> Figure:
    pruners = results.pruners or ["none"]
    rows = math.ceil(len(pruners) / 3)
    fig = Figure(figsize=(5.0 * min(len(pruners), 3) + 0.5, 5.4 * rows + 0.6))
    axes = _panel_grid(fig, len(pruners), sharey=True, sharex=True)
    values = [t[metric] for t in results.completed if t.get(metric) is not None]
    if baseline_metric:
        values += [t[baseline_metric] for t in results.completed
                   if t["kind"] == BASELINE and t.get(baseline_metric) is not None]
    plotted: set[str] = set()
    markers = len(results.rates) <= MANY_RATES
    for ax, pruner in zip(axes, pruners):
        for model in results.models:
            points = results.curve(model, pruner, metric, baseline_metric=baseline_metric)
            style = model_style(results, model)
            if points:
                plotted.add(model)
                _line_with_band(ax, points, markers=markers, **style)
            short = _short(results, metric, model=model, pruner=pruner)
            if short:
                plotted.add(model)
                _draw_short(ax, [t["rate"] for t in short], [t[metric] for t in short], style["color"],
                            style["marker"])
        if diagonal:
            ax.plot([0, 1], [0, 1], color="#999", linestyle=":", linewidth=1)
        elif values and min(values) < 0.3:  # chance level is worth seeing only near it
            ax.axhline(1 / NUM_CLASSES, color="#999", linestyle=":", linewidth=1)
            ax.text(0.0, 1 / NUM_CLASSES, " chance", va="bottom", fontsize=9, color="#777")
        ax.set_title(_pruner_title(results, pruner))
        _rate_axis(ax, results.rates)
        _pct_axis(ax.yaxis)
        ax.set_xlabel(RATE_LABEL)
    for ax in axes[::3]:
        ax.set_ylabel(ylabel)
    if diagonal:
        axes[0].set_ylim(-0.02, max([0.82, *values]) + 0.05)
    else:
        low = min(values, default=0.0)
        axes[0].set_ylim(max(0.0, low - 0.05) if low > 0.3 else 0.0, min(1.0, max(values, default=1.0) + 0.03))
    _header(fig, title, f"{_subtitle(results)}\n{_spread_note(results)}")
    handles = _model_legend(results, [m for m in results.models if m in plotted])
    if _short(results, metric):
        handles.append(_short_handle())
    if diagonal:
        handles.append(Line2D([], [], color="#999", linestyle=":", label="reduction = rate"))
    _legend_right(fig, handles, "model")
    return fig


def accuracy_vs_rate(results: SweepResults) -> Figure:
    return _vs_rate(results, "accuracy", "Top-1 accuracy after fine-tuning vs requested pruning rate",
                    "top-1 accuracy after fine-tuning (%)", diagonal=False)


def pruned_accuracy_vs_rate(results: SweepResults) -> Figure:
    return _vs_rate(results, "accuracy_pruned", "Top-1 accuracy right after pruning (before fine-tuning)",
                    "top-1 accuracy before fine-tuning (%)", diagonal=False, baseline_metric="accuracy")


def reduction_vs_rate(results: SweepResults) -> Figure:
    return _vs_rate(results, "param_reduction", "Parameter reduction vs requested pruning rate",
                    "parameters removed (% of the unpruned model)", diagonal=True)


# accuracy against what was removed, not what was asked ----------------------------------
def accuracy_vs_sparsity(results: SweepResults) -> Figure:
    pruners = results.pruners or ["none"]
    rows = math.ceil(len(pruners) / 3)
    fig = Figure(figsize=(5.0 * min(len(pruners), 3) + 0.5, 5.4 * rows + 0.6))
    axes = _panel_grid(fig, len(pruners), sharey=True, sharex=True)
    markers = len(results.rates) <= MANY_RATES
    plotted: set[str] = set()
    values = [t["accuracy"] for t in results.completed if t.get("accuracy") is not None]
    widest = max((t["channel_sparsity"] for t in results.completed if t.get("channel_sparsity") is not None),
                 default=1.0)
    for ax, pruner in zip(axes, pruners):
        for model in results.models:
            style = model_style(results, model)
            points = []
            base = results.baseline(model)
            if base is not None and base.estimate("accuracy") is not None:
                points.append((Estimate(0.0, 1), base.estimate("accuracy")))
            for rate in results.rates:
                config = results.configurations.get((model, pruner, rate))
                if config is None:
                    continue
                sparsity, accuracy = config.estimate("channel_sparsity"), config.estimate("accuracy")
                if sparsity is not None and accuracy is not None:
                    points.append((sparsity, accuracy))
            short = _short(results, "channel_sparsity", model=model, pruner=pruner)
            short = [t for t in short if t.get("accuracy") is not None]
            if short:
                plotted.add(model)
                _draw_short(ax, [t["channel_sparsity"] for t in short], [t["accuracy"] for t in short],
                            style["color"], style["marker"])
            if len(points) < 2:
                continue
            plotted.add(model)
            points.sort(key=lambda p: p[0].mean)
            xs, ys = [p[0].mean for p in points], [p[1].mean for p in points]
            ax.plot(xs, ys, linewidth=2, markersize=6 if markers else 0, alpha=0.9, **style)
            spread = [(x, y, p) for x, y, p in zip(xs, ys, points) if p[0].measured or p[1].measured]
            if spread:
                ax.errorbar([x for x, _, _ in spread], [y for _, y, _ in spread],
                            xerr=[p[0].half_width or 0.0 for _, _, p in spread],
                            yerr=[p[1].half_width or 0.0 for _, _, p in spread],
                            fmt="none", ecolor=style["color"], elinewidth=1, capsize=2, alpha=0.8)
        ax.set_title(_pruner_title(results, pruner))
        _pct_axis(ax.xaxis)
        _pct_axis(ax.yaxis)
        ax.set_xlim(-0.03, min(1.0, widest + 0.05))
        ax.grid(True, alpha=0.3)
        ax.set_xlabel(SPARSITY_LABEL)
    for ax in axes[::3]:
        ax.set_ylabel("top-1 accuracy after fine-tuning (%)")
    low = min(values, default=0.0)
    axes[0].set_ylim(max(0.0, low - 0.05) if low > 0.3 else 0.0, min(1.0, max(values, default=1.0) + 0.03))
    _header(fig, "Top-1 accuracy vs achieved channel sparsity",
            f"{_subtitle(results)}\n{_spread_note(results, 'error bars')}")
    handles = _model_legend(results, [m for m in results.models if m in plotted])
    if any(t.get("accuracy") is not None for t in _short(results, "channel_sparsity")):
        handles.append(_short_handle())
    _legend_right(fig, handles, "model")
    return fig


# per model: the pruners side by side ------------------------------------------------------
def model_chart(results: SweepResults, model: str) -> Figure:
    pruners = results.pruners
    rates = results.rates
    fig = Figure(figsize=(8, 7.8))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    before = any(c.model == model and c.values("accuracy_pruned") for c in results.configurations.values())
    if len(rates) <= MANY_RATES:
        _model_bars(results, model, top, bottom)
    else:
        _model_lines(results, model, top, bottom)
    base = results.baseline(model)
    base_accuracy = base.estimate("accuracy") if base else None
    if base_accuracy is not None:
        top.axhline(base_accuracy.mean, color="black", linestyle="--", linewidth=1.2)
        if base_accuracy.measured:
            top.axhspan(base_accuracy.low, base_accuracy.high, color="black", alpha=0.08, linewidth=0, zorder=0)
        right = len(rates) - 0.5 if len(rates) <= MANY_RATES else max(rates) + 0.03
        top.text(right, base_accuracy.mean, f"baseline {fmt.pct_pm(base_accuracy.mean, base_accuracy.half_width)}",
                 ha="right", va="bottom", fontsize=10)
    top.set_ylabel("top-1 accuracy (%)")
    bottom.set_ylabel("parameters\nremoved (%)")
    for ax in (top, bottom):
        _pct_axis(ax.yaxis)
        ax.grid(True, axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    accs = [t[m] for t in results.completed if t["model"] == model
            for m in ("accuracy", "accuracy_pruned") if t.get(m) is not None]
    low = min(accs, default=0.0)
    # Bars start at a round 10 % below the lowest one (at 0 when they spread widely), so
    # that the pruners' differences show; the axis says where it starts.
    top.set_ylim(math.floor((low - 0.05) * 10) / 10 if low > 0.4 else 0.0, min(1.0, max(accs, default=1.0) + 0.04))
    bottom.set_ylim(0, 1)
    bottom.set_xlabel(RATE_LABEL)
    params = base.estimate("params_after") if base else None
    lines = [_subtitle(results, short=True), _spread_note(results, "error bars" if len(rates) <= MANY_RATES
                                                            else "shaded band")]
    if params is not None:
        lines.append(f"{params.mean / 1e6:.2f} M parameters unpruned")
    handles: list = [Patch(color=PRUNER_COLOURS[j % len(PRUNER_COLOURS)], label=p) for j, p in enumerate(pruners)]
    handles.append(Line2D([], [], color="black", linestyle="--", label="unpruned baseline"))
    if _short(results, "accuracy", model=model):
        handles.append(_short_handle())
    if before:
        handles.append(Line2D([], [], color="#333", marker="v", linestyle="none" if len(rates) <= MANY_RATES else ":",
                              markerfacecolor="white", label="after pruning, before fine-tuning"))
    columns = min(len(handles), 4)
    _header(fig, f"{model}: pruners side by side", "\n".join(lines), lines=1 + math.ceil(len(handles) / columns))
    # In a row above the plots (outside them): this chart is shown two to a row.
    box = top.get_position()
    fig.legend(handles=handles, loc="lower left", bbox_to_anchor=(box.x0, box.y1 + 0.01),
               ncols=columns, frameon=False, title="pruner", alignment="left",
               title_fontsize=11, handlelength=1.6, columnspacing=1.2)
    return fig


def _model_bars(results: SweepResults, model: str, top, bottom) -> None:
    """A bar per pruner at each rate: the mean, with its interval as an error bar; the
    accuracy right after pruning as a marker on the accuracy bar."""
    pruners, rates = results.pruners, results.rates
    width = 0.8 / max(len(pruners), 1)
    for j, pruner in enumerate(pruners):
        colour = PRUNER_COLOURS[j % len(PRUNER_COLOURS)]
        offset = (j - (len(pruners) - 1) / 2) * width
        for ax, metric in ((top, "accuracy"), (bottom, "param_reduction"), (top, "accuracy_pruned")):
            by_rate = dict(p for p in results.curve(model, pruner, metric) if p[0] > 0)
            xs = [i + offset for i, r in enumerate(rates) if r in by_rate]
            estimates = [by_rate[r] for r in rates if r in by_rate]
            if metric == "accuracy_pruned":
                ax.scatter(xs, [e.mean for e in estimates], marker="v", s=34, facecolors="white",
                           edgecolors="#333", linewidths=1.2, zorder=4)
            else:
                ax.bar(xs, [e.mean for e in estimates], width=width * 0.95, color=colour,
                       label=pruner if metric == "accuracy" else None)
            measured = [(x, e) for x, e in zip(xs, estimates) if e.measured]
            if measured:
                ax.errorbar([x for x, _ in measured], [e.mean for _, e in measured],
                            yerr=[e.half_width for _, e in measured], fmt="none", ecolor="#222",
                            elinewidth=1, capsize=2.5, zorder=5)
    for j, pruner in enumerate(pruners):
        short = [t for t in _short(results, "accuracy", model=model, pruner=pruner) if t["rate"] in rates]
        offset = (j - (len(pruners) - 1) / 2) * width
        _draw_short(top, [rates.index(t["rate"]) + offset for t in short], [t["accuracy"] for t in short],
                    PRUNER_COLOURS[j % len(PRUNER_COLOURS)])
    # A gap in the bars says why: the trial failed (see the report's table) or is not done.
    status: dict[tuple[str, float], str] = {}
    for t in results.trials:
        if t["model"] == model and t["kind"] == PRUNED and t["status"] != "completed":
            status.setdefault((t["pruner"], t["rate"]), t["status"])
    for (pruner, rate), state in status.items():
        if pruner in pruners and rate in rates and (model, pruner, rate) not in results.configurations:
            x = rates.index(rate) + (pruners.index(pruner) - (len(pruners) - 1) / 2) * width
            top.text(x, 0.02, state, transform=top.get_xaxis_transform(), rotation=90, ha="center",
                     va="bottom", fontsize=9, color="#c62828" if state == "failed" else "#777")
    bottom.set_xticks(range(len(rates)))
    bottom.set_xticklabels([fmt.rate(r) for r in rates])


def _model_lines(results: SweepResults, model: str, top, bottom) -> None:
    """Past MANY_RATES rates: a line per pruner (dotted: right after pruning), failed
    trials as red crosses at the bottom."""
    for j, pruner in enumerate(results.pruners):
        colour = PRUNER_COLOURS[j % len(PRUNER_COLOURS)]
        for ax, metric, dots in ((top, "accuracy", False), (top, "accuracy_pruned", True),
                                 (bottom, "param_reduction", False)):
            points = [p for p in results.curve(model, pruner, metric) if p[0] > 0]
            if points:
                _line_with_band(ax, points, markers=False, color=colour, linestyle=":" if dots else "-")
        short = _short(results, "accuracy", model=model, pruner=pruner)
        _draw_short(top, [t["rate"] for t in short], [t["accuracy"] for t in short], colour, size=24)
        failed = sorted({t["rate"] for t in results.failed if t["model"] == model and t["pruner"] == pruner})
        if failed:
            top.scatter(failed, [0.03] * len(failed), marker="x", color="#c62828", s=20,
                        transform=top.get_xaxis_transform(), zorder=5)
    _rate_axis(bottom, results.rates)
    top.grid(True, axis="x", alpha=0.3)


def _pruner_title(results: SweepResults, pruner: str) -> str:
    """A panel's title: the pruner, and for one that zeroes weights, that it removes none."""
    if pruner in results.unstructured_pruners:
        return f"pruner: {pruner}\n(unstructured: weights zeroed, none removed)"
    return f"pruner: {pruner}"


# trade-offs: accuracy against a cost, with the Pareto front ---------------------------------
_COST_AXES = {
    "params_after": ("parameters (millions, log scale)", 1e6, "{:.3g} M"),
    "macs_after": ("MACs per image (millions, log scale)", 1e6, "{:.3g} M"),
    "latency_ms": ("CPU latency, batch 1 (ms, median)", 1.0, "{:.3g} ms"),
}


def tradeoff_chart(results: SweepResults, cost: str) -> Figure:
    label, scale, tick = _COST_AXES[cost]
    points = [t for t in results.summaries if t.get("accuracy") is not None and t.get(cost) is not None]
    front = pareto_front(results.summaries, cost)
    fig = Figure(figsize=(11, 6.4))
    ax = fig.subplots()
    for model in results.models:
        style = model_style(results, model)
        short = [t for t in _short(results, cost, model=model) if t.get("accuracy") is not None]
        _draw_short(ax, [t[cost] / scale for t in short], [t["accuracy"] for t in short], style["color"],
                    style["marker"])
        for kind, filled in ((PRUNED, True), (BASELINE, False)):
            mine = [t for t in points if t["model"] == model and t["kind"] == kind]
            if mine:
                ax.scatter([t[cost] / scale for t in mine], [t["accuracy"] for t in mine],
                           marker=style["marker"], s=46 if filled else 90, alpha=0.8 if filled else 1,
                           facecolors=style["color"] if filled else "white",
                           edgecolors=style["color"], linewidths=1.6 if not filled else 0.5, zorder=3)
            spread = [t for t in mine if t["spread"]["accuracy"].measured
                      or (cost in t["spread"] and t["spread"][cost].measured)]
            if spread:
                ax.errorbar([t[cost] / scale for t in spread], [t["accuracy"] for t in spread],
                            yerr=[t["spread"]["accuracy"].half_width or 0.0 for t in spread],
                            xerr=[(t["spread"][cost].half_width or 0.0) / scale for t in spread],
                            fmt="none", ecolor=style["color"], elinewidth=0.9, alpha=0.6, zorder=2)
    if front:
        xs = [t[cost] / scale for t in front]
        ys = [t["accuracy"] for t in front]
        ax.step(xs, ys, where="post", color="black", linewidth=1.3, zorder=2)
        ax.scatter(xs, ys, s=170, facecolors="none", edgecolors="black", linewidths=1.4, zorder=4)
    values = [t[cost] for t in points] + [t[cost] for t in _short(results, cost)]
    if cost != "latency_ms" or max(values, default=1) / max(min(values, default=1), 1e-9) > 20:
        ax.set_xscale("log")
        # Plain numbers (matplotlib's default log labels are mathtext, slow to typeset).
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.6)))
    else:  # an interval may reach below 0, which no cost can be
        ax.set_xlim(left=max(ax.get_xlim()[0], 0.0))
    ax.set_xlabel(label)
    ax.set_ylabel("top-1 accuracy (%)")
    low, high = ax.get_ylim()  # an interval may reach past what an accuracy can be
    ax.set_ylim(max(low, -0.02), min(high, 1.02))
    _pct_axis(ax.yaxis)
    ax.grid(True, which="both", alpha=0.25)
    _header(fig, f"Top-1 accuracy vs {COST_NAMES[cost]} (up and to the left is better)",
            f"{_subtitle(results)}\n{_spread_note(results, 'error bars')}; the front compares means")
    on_front = {t["key"] for t in front}
    _label_front(fig, ax, [((t[cost] / scale, t["accuracy"]), trial_label(t)) for t in front],
                 [(t[cost] / scale, t["accuracy"]) for t in points if t["key"] not in on_front])
    drawn = points + _short(results, cost)
    handles = _model_legend(results, [m for m in results.models if any(t["model"] == m for t in drawn)])
    for h in handles:
        h.set_linestyle("none")
    handles += [
        Line2D([], [], marker="o", linestyle="none", markerfacecolor="white", markeredgecolor="#555",
               markersize=9, label="unpruned baseline"),
        Line2D([], [], marker="o", color="black", markerfacecolor="none", markersize=13,
               linewidth=1.3, label="Pareto front"),
    ]
    if _short(results, cost):
        handles.append(_short_handle())
    _legend_right(fig, handles, "model")
    return fig


_VARIANT_AXES = {
    "model_size_bytes": ("model file size (MB, log scale)", 1e6),
    "latency_ms": ("latency on the measuring node, batch {batch} (ms, median)", 1.0),
}


def _pruning_kind(row: dict[str, Any]) -> str:
    if row["kind"] == BASELINE:
        return "baseline"
    return "unstructured" if row.get("structure") == "unstructured" else "structured"


def variant_tradeoff_chart(results: SweepResults, cost: str) -> Figure:
    """Accuracy of every deployable variant against its file size or its latency on the
    measuring node: colour the format, marker the model, fill what pruning did; the
    Pareto front is across prune x quantize."""
    rows = results.variant_summaries
    points = [v for v in rows if v.get("accuracy") is not None and v.get(cost) is not None]
    front = pareto_front(rows, cost)
    batch = next((v["batch_size"] for v in points if v.get("batch_size")), 1)
    label, scale = _VARIANT_AXES[cost]
    fig = Figure(figsize=(11, 6.4))
    ax = fig.subplots()
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for v in points:
        groups.setdefault((v["model"], v["format"], _pruning_kind(v)), []).append(v)
    for (model, name, kind), mine in groups.items():
        colour = FORMAT_COLOURS.get(name, "#555")
        ax.plot([v[cost] / scale for v in mine], [v["accuracy"] for v in mine], linestyle="none",
                marker=model_style(results, model)["marker"], markersize=9 if kind == "baseline" else 7.5,
                color=colour, markerfacecolor=colour if kind != "baseline" else "white",
                markerfacecoloralt="white", fillstyle=PRUNING_FILL[kind][0], markeredgewidth=1.4, alpha=0.9,
                zorder=3)
    if front:
        xs, ys = [v[cost] / scale for v in front], [v["accuracy"] for v in front]
        ax.step(xs, ys, where="post", color="black", linewidth=1.3, zorder=2)
        ax.scatter(xs, ys, s=190, facecolors="none", edgecolors="black", linewidths=1.4, zorder=4)
    values = [v[cost] / scale for v in points]
    if values and max(values) / max(min(values), 1e-9) > 8:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.6)))
    else:
        ax.set_xlim(left=0.0)
    ax.set_xlabel(label.format(batch=batch) if cost == "latency_ms" else label)
    ax.set_ylabel("top-1 accuracy in ONNX Runtime (%)")
    _pct_axis(ax.yaxis)
    ax.grid(True, which="both", alpha=0.25)
    nodes = "; ".join(results.measuring_nodes) or "not measured"
    what = "model file size" if cost == "model_size_bytes" else "latency on the measuring node"
    _header(fig, f"Top-1 accuracy vs {what}, per format (up and to the left is better)",
            f"{_subtitle(results)}\nmeasured on {nodes}; the front spans pruning x quantization")
    on_front = {v["key"] for v in front}
    _label_front(fig, ax, [((v[cost] / scale, v["accuracy"]), trial_label(v)) for v in front],
                 [(v[cost] / scale, v["accuracy"]) for v in points if v["key"] not in on_front])
    formats = list(dict.fromkeys(v["format"] for v in points))
    handles: list = [Patch(color=FORMAT_COLOURS.get(f, "#555"), label=f) for f in formats]
    handles += [Line2D([], [], linestyle="none", color="#555", label=m, markersize=8,
                       marker=model_style(results, m)["marker"])
                for m in results.models if any(v["model"] == m for v in points)]
    handles += [Line2D([], [], linestyle="none", marker="o", color="#555", markerfacecoloralt="white",
                       fillstyle=fill, markersize=9, label=text)
                for kind, (fill, text) in PRUNING_FILL.items() if any(_pruning_kind(v) == kind for v in points)]
    handles.append(Line2D([], [], marker="o", color="black", markerfacecolor="none", markersize=13,
                          linewidth=1.3, label="Pareto front"))
    _legend_right(fig, handles, "format, model, pruning")
    return fig


# Where a front label may go, relative to its point: up-left first (the empty side of
# an accuracy-vs-cost front), then the other corners.
_LABEL_SPOTS = ((-9, 5, "right", "bottom"), (8, 7, "left", "bottom"), (-9, -5, "right", "top"),
                (9, -6, "left", "top"), (0, 11, "center", "bottom"))


def _label_front(fig: Figure, ax, points: list[tuple[tuple[float, float], str]],
                 others: list[tuple[float, float]]) -> None:
    """Name the Pareto-front points where a label fits without covering another label,
    a plotted point or the axes' edge; most accurate first, at most FRONT_LABELS of them.
    Says how many went unnamed."""
    if not points:
        return
    renderer = FigureCanvasAgg(fig).get_renderer()
    frame = ax.get_window_extent(renderer)
    rings = [Bbox.from_bounds(x - 9, y - 9, 18, 18) for x, y in ax.transData.transform([xy for xy, _ in points])]
    dots = [Bbox.from_bounds(x - 4, y - 4, 8, 8) for x, y in ax.transData.transform(others)] if others else []
    placed: list[Bbox] = []
    named = 0
    for i in sorted(range(len(points)), key=lambda i: -points[i][0][1])[:FRONT_LABELS]:
        xy, label = points[i]
        for dx, dy, ha, va in _LABEL_SPOTS:
            text = ax.annotate(label, xy, xytext=(dx, dy), textcoords="offset points", ha=ha, va=va,
                               fontsize=9, color="#222", zorder=5)
            box = text.get_window_extent(renderer).padded(2)
            fits = (frame.contains(box.x0, box.y0) and frame.contains(box.x1, box.y1)
                    and not any(box.overlaps(b) for b in placed)
                    and not any(box.overlaps(r) for j, r in enumerate(rings) if j != i)
                    and not any(box.overlaps(d) for d in dots))
            if fits:
                placed.append(box)
                named += 1
                break
            text.remove()
    if named < len(points):
        ax.text(0.99, 0.01, f"{named} of {len(points)} front points named; the report's "
                "Pareto table lists all", transform=ax.transAxes, ha="right", va="bottom",
                fontsize=9, color="#555")


# rendering -------------------------------------------------------------------------------------
def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def _digest(results: SweepResults, *parts: Any) -> str:
    """What a chart depends on: the figures it plots and the texts it shows."""
    payload = [CHART_VERSION, results.models, results.pruners, results.rates, _subtitle(results), *parts]
    return hashlib.sha1(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _figures_of(results: SweepResults, model: str | None = None) -> list:
    """What the charts show of the trials: the figures of the completed ones; for one
    model's chart also the status of the others (it marks failed and unfinished ones)."""
    cols = ("model", "pruner", "rate", "kind", "status", "seed", "budget", "accuracy", "accuracy_pruned",
            "channel_sparsity", "param_reduction", "params_after", "macs_after", "latency_ms")
    return [[t.get(c) if t["status"] == "completed" or i < 7 else None for i, c in enumerate(cols)]
            for t in results.trials
            if (model is None and t["status"] == "completed") or t["model"] == model]


def plan_charts(results: SweepResults) -> list[tuple[Chart, Callable[[], Figure]]]:
    """The charts this sweep's results can fill, each with the function that draws it."""
    if not results.completed:
        return []
    everything = _figures_of(results)
    dataset = results.dataset_label
    spread = ("Lines are means over the seeds, shaded bands their 95 % intervals." if results.spread_measured
              else f"{results.no_spread_reason().capitalize()}.")
    if results.stopped_early:
        spread += (" Hollow markers joined to nothing: trials the adaptive search stopped early, after a short "
                   "fine-tune not comparable with a full one; skipped trials are not drawn.")
    plan: list[tuple[Chart, Callable[[], Figure]]] = [
        (Chart("accuracy_vs_rate.png", "rate", "Accuracy vs requested pruning rate",
               f"Top-1 accuracy on {dataset} after pruning and fine-tuning, a line per model and a "
               "panel per pruner; the point at 'base' is the unpruned, fine-tuned model. The rate is "
               f"the share of filters requested per selected layer. {spread}",
               _digest(results, "acc", everything)),
         lambda: accuracy_vs_rate(results)),
    ]
    if any(t.get("accuracy_pruned") is not None for t in results.completed):
        plan.append((
            Chart("accuracy_pruned_vs_rate.png", "rate", "Accuracy right after pruning",
                  "Top-1 accuracy of the pruned model before any fine-tuning: what the pruning "
                  "criterion kept, apart from what fine-tuning recovers (compare with the chart "
                  f"above). The point at 'base' is the unpruned model. {spread}",
                  _digest(results, "acc-pruned", everything)),
            lambda: pruned_accuracy_vs_rate(results)))
    plan.append((
        Chart("param_reduction_vs_rate.png", "rate", "Parameter reduction vs requested pruning rate",
              "Share of the unpruned model's parameters that pruning removed. On the dotted "
              "diagonal a model shrinks as fast as the rate; below it, channel dependencies "
              "(depthwise convolutions, concatenations, skipped layers) keep weights in place.",
              _digest(results, "red", everything)),
        lambda: reduction_vs_rate(results)))
    if any(t.get("channel_sparsity") is not None for t in results.completed):
        plan.append((
            Chart("accuracy_vs_sparsity.png", "rate", "Accuracy vs achieved channel sparsity",
                  "Top-1 accuracy after fine-tuning against the share of filters actually removed "
                  "from the selected layers (which can differ from the requested rate where layers "
                  f"are coupled). {spread.replace('shaded bands', 'bars')}",
                  _digest(results, "sparsity", everything)),
            lambda: accuracy_vs_sparsity(results)))
    for cost in ("params_after", "macs_after", "latency_ms"):
        if any(t.get(cost) is not None and t.get("accuracy") is not None for t in results.completed):
            name = COST_NAMES[cost]
            plan.append((
                Chart(f"accuracy_vs_{_safe(name.lower())}.png", "tradeoff", f"Accuracy vs {name}",
                      f"Every completed configuration (model, pruner, rate) at its mean; large hollow "
                      f"markers are unpruned baselines. The black step line and rings mark the "
                      f"Pareto front of the means: no other configuration is both more accurate "
                      f"and cheaper in {name}."
                      + (" Error bars: 95 % intervals over the seeds." if results.spread_measured else "")
                      + (" Small hollow markers: trials stopped early (a short fine-tune, not comparable "
                         "with full ones, so not on the front)." if results.stopped_early else ""),
                      _digest(results, cost, everything)),
                lambda cost=cost: tradeoff_chart(results, cost)))
    if results.variants:
        shown = [[v.get(c) for c in ("key", "accuracy", "model_size_bytes", "latency_ms", "structure",
                                     "node_host", "cpus")] for v in results.variant_summaries]
        nodes = "; ".join(results.measuring_nodes) or "no node yet (run `measure`)"
        for cost, filename, title, caption in (
                ("model_size_bytes", "variants_accuracy_vs_size.png", "Accuracy vs model file size, per format",
                 "Every deployable variant (model, pruner, rate, format): its top-1 accuracy in ONNX Runtime "
                 "against the size of its .onnx file."),
                ("latency_ms", "variants_accuracy_vs_latency.png", "Accuracy vs latency on the measuring node, "
                 "per format", f"Every measured variant's median latency, measured on {nodes}.")):
            if any(v.get(cost) is not None for v in results.variant_summaries):
                plan.append((
                    Chart(filename, "edge", title,
                          f"{caption} Colour: format; marker: model; filled: pruned by removing parameters, "
                          "half-filled: pruned by zeroing weights (nothing removed), hollow: unpruned. The black "
                          "step line and rings mark the Pareto front across pruning and quantization.",
                          _digest(results, "variants", cost, shown)),
                    lambda cost=cost: variant_tradeoff_chart(results, cost)))
    if results.pruners:
        for model in results.models:
            mine = _figures_of(results, model)
            if any(row[3] == PRUNED and row[4] == "completed" for row in mine):
                plan.append((
                    Chart(f"model_{_safe(model)}.png", "model", model,
                          f"{model}: accuracy (top) and parameters removed (bottom) per pruner at "
                          "each requested rate; the dashed line is the unpruned baseline"
                          + ("; triangles: accuracy right after pruning, before fine-tuning"
                             if any(row[8] is not None for row in mine) else "")
                          + ("; error bars: 95 % intervals over the seeds" if results.spread_measured else "")
                          + ("; hollow circles: trials stopped early (a short fine-tune)"
                             if any(row[3] == PRUNED and row[4] == "completed" and (row[6] or 1.0) < 1.0
                                    for row in mine) else "") + ".",
                          _digest(results, "model", model, mine), model=model),
                    lambda model=model: model_chart(results, model)))
    return plan


def render_charts(results: SweepResults, out_dir: str | Path) -> list[Chart]:
    """Write the charts' PNGs into `out_dir`, redrawing only those whose data changed.
    Charts written by an earlier call that no longer apply are removed."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        manifest = {}
    charts = []
    for chart, draw in plan_charts(results):
        fresh = manifest.get(chart.filename) == chart.digest and (out / chart.filename).is_file()
        if fresh or _draw(results, chart, draw, out):
            charts.append(chart)
    new_manifest = {c.filename: c.digest for c in charts}
    for stale in set(manifest) - set(new_manifest):
        (out / _safe(stale)).unlink(missing_ok=True)
    write_atomic(manifest_path, json.dumps(new_manifest, indent=1).encode())
    return charts


def _draw(results: SweepResults, chart: Chart, draw: Callable[[], Figure], out: Path) -> bool:
    path = out / chart.filename
    try:
        with rc_context(STYLE):
            _save(draw(), path)
    except Exception:  # one bad chart must not cost the report (or the sweep) the rest
        log.exception("chart %s of sweep %s could not be drawn", chart.filename, results.sweep_id)
        path.unlink(missing_ok=True)
        return False
    return True
