"""The report, `status`, `recommend` and `export` of sweeps with repeats (means, intervals,
the pairwise table), of one-seed and older sweeps, and of large grids; from seeded
databases alone."""
from __future__ import annotations

import csv
import io
import json
import sqlite3
import time

import pytest
from matplotlib.collections import PolyCollection
from matplotlib.container import BarContainer, ErrorbarContainer
from matplotlib.figure import Figure
from seed_db import WORKER_VERSIONS, parse_page, seed_sweep, seeded_copy

from sweep_service.cli import main
from sweep_service.coordinator.store import ResultStore
from sweep_service.report import charts, write_report
from sweep_service.report.export import SUMMARY_COLUMNS
from sweep_service.report.page import render_page
from sweep_service.report.recommend import Limits, recommend
from sweep_service.report.results import load_results
from sweep_service.report.stats import estimate, paired_difference

SEEDED = dict(models=["resnet50", "mobilenet_v2"], pruners=["l1norm", "fpgm"], rates=[0.3, 0.6], seeds=(0, 1, 2))


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    db, sweep_id = seeded_copy(tmp_path_factory.mktemp("repeats"), **SEEDED)
    return db


@pytest.fixture(scope="module")
def results(seeded):
    return load_results(seeded)


def test_configurations_average_their_seeds(results):
    config = results.configurations[("resnet50", "fpgm", 0.6)]
    assert config.seeds == [0, 1, 2]
    trials = [t for t in results.completed if (t["model"], t["pruner"], t["rate"]) == ("resnet50", "fpgm", 0.6)]
    assert config.estimate("accuracy") == estimate(t["accuracy"] for t in trials)
    row = next(r for r in results.summaries if r["key"] == config.trials[0]["key"])
    assert row["n"] == 3 and row["accuracy"] == pytest.approx(sum(t["accuracy"] for t in trials) / 3)
    assert row["spread"]["accuracy"].measured
    base = results.baseline("resnet50")
    assert base.seeds == [0, 1, 2] and base.kind == "baseline"
    # The drop of each trial is against its own seed's baseline.
    for t in trials:
        assert t["accuracy_drop"] == pytest.approx(base.values("accuracy")[t["seed"]] - t["accuracy"])


def test_pairwise_comparison_is_the_paired_difference_of_the_same_seeds(results):
    comparisons = results.pairwise("mobilenet_v2")
    assert [(c.rate, c.first, c.second) for c in comparisons] == [(0.3, "l1norm", "fpgm"), (0.6, "l1norm", "fpgm")]
    for c in comparisons:
        a, b = (results.configurations[("mobilenet_v2", p, c.rate)].values("accuracy") for p in ("l1norm", "fpgm"))
        assert c.difference == paired_difference(a, b)
        expected = ("not distinguishable from noise" if c.difference.contains(0.0)
                    else f"{'l1norm' if c.difference.mean > 0 else 'fpgm'} better")
        assert c.verdict == expected


def test_charts_draw_means_with_interval_bands_and_error_bars(results):
    figure = charts.accuracy_vs_rate(results)
    panels = [ax for ax in figure.axes if ax.get_visible()]
    for ax in panels:
        assert len([c for c in ax.collections if isinstance(c, PolyCollection)]) == 2  # a band per model
        assert ax.get_xlabel() == "requested pruning rate (%)"
        curve = next(line for line in ax.lines if len(line.get_xdata()) == 3)
        assert curve.get_xdata()[0] == 0.0  # the baselines' mean first
    assert "mean over 3 seeds, shaded band: 95 % interval" in " ".join(t.get_text() for t in figure.texts)
    top = charts.model_chart(results, "resnet50").axes[0]
    bars = [c for c in top.containers if isinstance(c, BarContainer)]
    error_bars = [c for c in top.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 2  # a set of bars per pruner
    # Per pruner: intervals of the accuracy after fine-tuning and of the one before it.
    assert len(error_bars) == 4 and all(len(c.lines[2][0].get_segments()) == 2 for c in error_bars)
    sparsity = charts.accuracy_vs_sparsity(results)
    assert "achieved channel sparsity" in sparsity.axes[0].get_xlabel()


def test_page_gives_mean_and_interval_and_the_pairwise_table(results, tmp_path):
    html = render_page(results, [], tmp_path)
    page = parse_page(html)
    best = page.tables["best-table"]
    assert all(" ± " in row[4] for row in best)
    assert page.tables["trials"][0][:3] == ["resnet50", "baseline", "0%"]  # a row per trial stays
    assert len(page.tables["trials"]) == 3 * 2 * (1 + 2 * 2)
    pairs = page.tables["pairwise-table-resnet50"]
    assert [row[:2] for row in pairs] == [["30%", "l1norm − fpgm"], ["60%", "l1norm − fpgm"]]
    assert all(row[4] == "3" and " to " in row[3] for row in pairs)
    assert "ran with 3 seeds (0, 1, 2)" in html and "no spread was measured" not in html
    assert "fine-tunes 1 epoch more, 4 epochs in all" in html


def test_one_seed_says_no_spread_was_measured(tmp_path):
    db = tmp_path / "one.db"
    seed_sweep(db, models=["resnet18"], pruners=["l1norm", "fpgm"], rates=[0.5])
    results = load_results(db)
    html = render_page(results, [], tmp_path)
    page = parse_page(html)
    assert "ran once (seed 0): no spread was measured" in html
    assert page.tables["pairwise-table-resnet18"][0][3:] == ["-", "1", "one seed: no spread measured"]
    assert " ± " not in " ".join(" ".join(r) for r in page.tables["best-table"])
    figure = charts.accuracy_vs_rate(results)
    assert not [c for ax in figure.axes for c in ax.collections if isinstance(c, PolyCollection)]
    assert "one seed per configuration: no spread measured" in " ".join(t.get_text() for t in figure.texts)


def test_percent_ticks_keep_the_decimals_they_need():
    ax = Figure().subplots()
    charts._pct_axis(ax.yaxis)
    ax.set_ylim(0.915, 0.935)
    ticks = [t for t in ax.get_yticks() if 0.915 - 1e-9 <= t <= 0.935 + 1e-9]
    labels = [ax.yaxis.get_major_formatter()(t, i) for i, t in enumerate(ticks)]
    assert "92.5%" in labels and "92%" in labels
    assert len(set(labels)) == len(labels)


def test_worker_versions_that_differ_are_warned_about(tmp_path):
    db = tmp_path / "w.db"
    sweep_id = seed_sweep(db, models=["resnet18"], pruners=["l1norm"], rates=[0.3, 0.6])
    store = ResultStore(db)
    odd = store.trials(sweep_id, kind="pruned")[0]
    store.record(sweep_id, odd["key"], {"worker_versions_json": json.dumps({**WORKER_VERSIONS, "torch": "2.13.0"}),
                                        "worker_host": "old-node"})
    store.close()
    results = load_results(db)
    assert results.worker_version_differences() == {"torch": ["2.14.1+cu130", "2.13.0"]}
    html = render_page(results, [], tmp_path)
    assert 'id="worker-warning"' in html and "torch 2.14.1+cu130 / 2.13.0" in html
    assert "old-node" in html and "0123456789abcdef0123456789abcdef01234567" in html  # the commit
    assert "ab" * 32 in html  # the data set's hash


def test_a_sweep_recorded_before_these_figures_still_reports(tmp_path):
    db = tmp_path / "old.db"
    seed_sweep(db, models=["resnet18"], pruners=["l1norm"], rates=[0.3, 0.6], pruned_figures=False)
    with sqlite3.connect(db) as con:  # rows recorded before trials had these columns
        con.execute("UPDATE trials SET grouping = NULL, allocation = NULL, seed = NULL")
    index = write_report(db, tmp_path / "report")
    names = {p.name for p in index.parent.glob("*.png")}
    assert "accuracy_vs_rate.png" in names
    assert not {"accuracy_pruned_vs_rate.png", "accuracy_vs_sparsity.png"} & names
    html = index.read_text()
    headers = html[html.index('<table id="trials"'):].split("</thead>")[0]
    assert "before FT" not in headers and "sparsity" not in headers
    assert "not recorded on the trials" in html and "Not recorded (trials from before" in html


def test_the_report_says_whether_channels_were_rounded(tmp_path):
    db = tmp_path / "r.db"
    seed_sweep(db, models=["resnet18"], pruners=["l1norm"], rates=[0.3, 0.6])
    kept = "channels kept per group</dt><dd>"
    assert f"{kept}as the rate gives<" in write_report(db, tmp_path / "plain").read_text()
    with sqlite3.connect(db) as con:
        con.execute("UPDATE trials SET round_to = 8 WHERE kind = 'pruned'")
    assert f"{kept}a multiple of 8<" in write_report(db, tmp_path / "rounded").read_text()


def test_recommend_status_and_export_give_mean_and_interval(seeded, results, capsys):
    rec = recommend(results, Limits(max_params=3_000_000))
    assert rec.chosen["model"] == "mobilenet_v2" and rec.chosen["n"] == 3
    text = "\n".join(rec.lines())
    assert "the most accurate by mean accuracy of the" in text and "completed configurations" in text
    assert " ± " in text and "over 3 seeds" in text and "(mean of 3 seeds: trials " in text

    assert main(["status", "--db", str(seeded)]) == 0
    out = capsys.readouterr().out
    assert "seed 2" in out
    assert sum(" 3 seeds  acc " in line for line in out.splitlines()) == 2 * (1 + 2 * 2)

    assert main(["export", "--db", str(seeded), "--summary"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert tuple(rows[0]) == SUMMARY_COLUMNS and len(rows) == 2 * (1 + 2 * 2)
    first = next(r for r in rows if (r["model"], r["pruner"], r["rate"]) == ("resnet50", "fpgm", "0.6"))
    value = results.configurations[("resnet50", "fpgm", 0.6)].estimate("accuracy")
    assert first["seeds"] == "0 1 2" and first["n"] == "3"
    assert float(first["accuracy_mean"]) == pytest.approx(value.mean)
    assert float(first["accuracy_ci95_low"]) == pytest.approx(value.low)

    assert main(["export", "--db", str(seeded), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["trials"]) == 30 and len(data["summary"]) == 10
    assert data["sweep"]["provenance"]["data_sha256"] == "ab" * 32
    assert main(["export", "--db", str(seeded), "--format", "json", "--summary"]) == 2
    assert "--summary is for CSV" in capsys.readouterr().err


def test_one_seed_status_and_recommend_say_no_spread_was_measured(tmp_path, capsys):
    db = tmp_path / "one.db"
    seed_sweep(db, models=["resnet18"], pruners=["l1norm"], rates=[0.5])
    assert main(["status", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "one seed per configuration: no spread measured" in out and "seed 0" not in out
    assert main(["recommend", "--db", str(db)]) == 0
    assert "one seed per configuration: no spread measured" in capsys.readouterr().out


def test_hundreds_of_rates_draw_in_seconds_with_thinned_ticks_and_exact_labels(tmp_path):
    rates = [round(0.002 * i, 4) for i in range(1, 300)] + [0.9999]
    db = tmp_path / "fine.db"
    seed_sweep(db, models=["resnet18"], pruners=["l1norm", "fpgm"], rates=rates)
    results = load_results(db)
    started = time.perf_counter()
    index = write_report(db, tmp_path / "report")
    seconds = time.perf_counter() - started
    print(f"\nreport of {len(results.trials)} trials ({len(rates)} rates): {seconds:.1f} s")
    assert seconds < 60
    for figure in (charts.accuracy_vs_rate(results), charts.model_chart(results, "resnet18")):
        figure.draw_without_rendering()
        for ax in figure.axes:
            if ax.get_visible() and ax.get_xlabel() == "requested pruning rate (%)":
                labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
                assert 3 <= len(labels) <= 12, labels
    html = index.read_text()
    assert "99.99%" in html and ">100%<" not in html
    assert "resnet18 fpgm 99.99%" == charts.trial_label(next(t for t in results.trials if t["rate"] == 0.9999
                                                                 and t["pruner"] == "fpgm"))


def test_a_sweep_with_seeds_to_come_does_not_claim_one_seed(tmp_path, capsys):
    db = tmp_path / "partial.db"
    seed_sweep(db, models=["resnet18"], pruners=["l1norm", "fpgm"], rates=[0.3, 0.6], seeds=(0, 1, 2), done=5,
               status="running")
    results = load_results(db)
    assert not results.spread_measured
    html = render_page(results, [], tmp_path)
    assert "runs with 3 seeds (0, 1, 2), but none has two of them completed yet" in html
    assert "ran once" not in html
    assert main(["status", "--db", str(db)]) == 0
    assert "3 seeds per configuration, none with two of them completed yet: no interval yet" in capsys.readouterr().out


def test_a_sweep_resumed_on_other_data_or_code_says_so(tmp_path):
    db = tmp_path / "resumed.db"
    sweep_id = seed_sweep(db, models=["resnet18"], pruners=["l1norm"], rates=[0.5])
    store = ResultStore(db)
    sweep = store.sweep(sweep_id)
    store.begin_sweep(sweep_id=sweep_id, name=sweep["name"], config_json=sweep["config_json"], dataset="synthetic",
                      weights="imagenet", versions={},
                      provenance={"git_commit": None, "git_note": "not a git checkout", "data_sha256": "cd" * 32,
                                  "earlier_data_sha256": ["ab" * 32], "earlier_git_commits": ["0123abcd"]})
    store.close()
    html = render_page(load_results(db), [], tmp_path)
    assert 'id="provenance-warning"' in html and "different data set files and different code" in html
    assert "ab" * 32 in html and "0123abcd" in html and "not a git checkout" in html
