"""The report of an adaptive sweep: skipped trials and trials stopped early, shown with their
reasons, drawn apart from full results and kept out of means, fronts and recommendations."""
from __future__ import annotations

import pytest
from matplotlib.colors import to_rgba
from seed_db import parse_page, seed_sweep

from sweep_service.coordinator.store import ResultStore
from sweep_service.report import charts, write_report
from sweep_service.report.page import render_page
from sweep_service.report.recommend import recommend
from sweep_service.report.results import load_results

MODELS, PRUNERS, RATES = ["resnet18", "mobilenet_v2"], ["l1norm", "fpgm"], [0.2, 0.4, 0.6, 0.8]
STOPPED = ("mobilenet_v2", "fpgm", 0.8)  # the smallest model of the grid
SKIPPED = [("mobilenet_v2", "l1norm", 0.6), ("mobilenet_v2", "l1norm", 0.8)]


@pytest.fixture
def adaptive(tmp_path):
    """An adaptive sweep with one trial stopped at its first rung and a line skipped past
    0.4. The stopped trial's short result is made the most accurate and the cheapest of the
    sweep: were short results candidates, it would head every front and recommendation."""
    db = tmp_path / "adaptive.db"
    sweep_id = seed_sweep(db, models=MODELS, pruners=PRUNERS, rates=RATES,
                          adaptive={"max_drop": 0.05, "rungs": [0.25], "front": "params"},
                          stopped={STOPPED: 0.25}, skipped=SKIPPED)
    store = ResultStore(db)
    stopped = next(t for t in store.trials(sweep_id) if (t["model"], t["pruner"], t["rate"]) == STOPPED)
    store.record(sweep_id, stopped["key"], {"accuracy": 0.99})
    store.engine.dispose()
    return db, stopped["key"]


def test_results_keep_short_budget_results_out_of_configurations(adaptive):
    db, key = adaptive
    results = load_results(db)
    assert [t["key"] for t in results.stopped_early] == [key]
    assert results.stopped_early[0]["budget"] == 0.25 and results.stopped_early[0]["rung"] == 1
    assert sorted((t["model"], t["pruner"], t["rate"]) for t in results.skipped) == SKIPPED
    assert STOPPED not in results.configurations
    assert key not in {t["key"] for t in results.summaries}
    assert key not in {t["key"] for t in results.pareto_set()}
    assert key not in {t["key"] for t in results.best_per_model()}
    chosen = recommend(results).chosen
    assert chosen is not None and chosen["key"] != key
    lines = "\n".join(recommend(results).lines())
    assert "1 trials the adaptive search stopped early are not candidates" in lines


def test_a_short_budget_seed_is_not_averaged_into_its_configuration(tmp_path):
    db = tmp_path / "seeds.db"
    seed_sweep(db, models=["resnet18"], pruners=["fpgm"], rates=[0.4], seeds=(0, 1, 2),
               adaptive={"max_drop": 0.05}, stopped={("resnet18", "fpgm", 0.4, 1): 0.25})
    results = load_results(db)
    config = results.configurations[("resnet18", "fpgm", 0.4)]
    assert config.seeds == [0, 2]
    full = [t["accuracy"] for t in results.trials if t["pruner"] == "fpgm" and t["seed"] in (0, 2)]
    assert config.estimate("accuracy").mean == pytest.approx(sum(full) / 2)
    assert config.estimate("accuracy").n == 2


def test_page_lists_skipped_and_stopped_trials_with_their_reasons(adaptive, tmp_path):
    db, key = adaptive
    html = render_page(load_results(db), [], tmp_path)
    page = parse_page(html)
    assert "Adaptive search: lines stop at the floor (max_drop 5 points from the baseline); rungs at 25 % " in html
    assert "2 trials skipped (its line fell below the floor) and 1 stopped early" in html
    rows = page.tables["stopped-table"]
    assert [r[:5] for r in rows] == [
        ["mobilenet_v2", "l1norm", "60%", "0", "skipped: not run"],
        ["mobilenet_v2", "l1norm", "80%", "0", "skipped: not run"],
        ["mobilenet_v2", "fpgm", "80%", "0", "stopped at 25 % of its fine-tune (rung 1)"],
    ]
    assert rows[0][6].startswith("line stopped: mobilenet_v2 l1norm fell below the floor")
    assert rows[2][5] == "99.0%" and rows[2][6].startswith("below the front after 25% of the fine-tune")
    # The trials table shows the share of its fine-tune each trial had.
    trials = page.tables["trials"]
    short = [r for r in trials if r[:3] == ["mobilenet_v2", "fpgm", "80%"]]
    assert len(short) == 1 and "25 %" in short[0] and 'class="pruned short"' in html
    assert all("full" in r for r in trials if r[:3] != ["mobilenet_v2", "fpgm", "80%"])
    # Neither the Pareto set nor the best per model nor the recommendation offers it.
    for table in ("pareto-table", "best-table"):
        assert not [r for r in page.tables[table] if r[:3] == ["mobilenet_v2", "fpgm", "80%"]]


def test_grid_sweep_page_has_no_adaptive_notes(tmp_path):
    db = tmp_path / "grid.db"
    seed_sweep(db, models=["resnet18"], pruners=["fpgm"], rates=[0.4])
    html = render_page(load_results(db), [], tmp_path)
    assert 'id="search-note"' not in html and 'id="stopped-table"' not in html
    assert "fine-tuned" not in {h for h in html.split('"')}  # no budget column


def _short_markers(fig):
    return [c for ax in fig.axes for c in ax.collections if c.get_gid() == charts.SHORT_GID]


def _legend_texts(fig):
    return [t.get_text() for legend in fig.legends for t in legend.get_texts()]


def test_charts_draw_short_results_hollow_and_leave_skipped_ones_out(adaptive):
    db, _ = adaptive
    results = load_results(db)
    stopped = results.stopped_early[0]

    fig = charts.tradeoff_chart(results, "params_after")
    (markers,) = _short_markers(fig)
    assert markers.get_offsets().tolist() == [[stopped["params_after"] / 1e6, 0.99]]
    assert markers.get_facecolors().size == 0 or markers.get_facecolors()[0][3] == 0  # hollow
    assert tuple(markers.get_edgecolors()[0][:3]) == pytest.approx(to_rgba(charts.MODEL_COLOURS[1])[:3])
    assert charts.SHORT_LABEL in _legend_texts(fig)
    # The front's rings are drawn at the front's points: not at the short result.
    rings = [c for c in fig.axes[0].collections if c.get_gid() != charts.SHORT_GID and c.get_sizes()[0] == 170]
    assert [0.99] not in [[y] for _, y in rings[0].get_offsets().tolist()]

    fig = charts.accuracy_vs_rate(results)
    panels = {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}
    short = [c for c in panels["pruner: fpgm"].collections if c.get_gid() == charts.SHORT_GID]
    assert [c.get_offsets().tolist() for c in short] == [[[0.8, 0.99]]]
    # The line of mobilenet_v2 fpgm stops before the stopped rate; l1norm's before the skipped ones.
    colour = charts.MODEL_COLOURS[1]
    for pruner, last in (("fpgm", 0.6), ("l1norm", 0.4)):
        (line,) = [ln for ln in panels[f"pruner: {pruner}"].lines if ln.get_color() == colour]
        assert max(line.get_xdata()) == last
    assert not [c for c in panels["pruner: l1norm"].collections if c.get_gid() == charts.SHORT_GID]
    assert charts.SHORT_LABEL in _legend_texts(fig)

    fig = charts.model_chart(results, "mobilenet_v2")
    (markers,) = _short_markers(fig)  # at the stopped trial's place among the bars, in its pruner's colour
    assert markers.get_offsets().tolist() == [[3 + 0.2, 0.99]]
    assert tuple(markers.get_edgecolors()[0][:3]) == pytest.approx(to_rgba(charts.PRUNER_COLOURS[1])[:3])
    assert charts.SHORT_LABEL in _legend_texts(fig)
    assert charts.SHORT_LABEL not in _legend_texts(charts.model_chart(results, "resnet18"))


def test_written_report_of_an_adaptive_sweep(adaptive, tmp_path):
    db, _ = adaptive
    index = write_report(db, tmp_path / "report")
    html = index.read_text()
    assert (index.parent / "model_mobilenet_v2.png").is_file()
    assert "hollow circles: trials stopped early" in html
    assert "Small hollow markers: trials stopped early" in html
    assert 'id="rec-short-note"' not in html  # no constraints: no recommendation section
