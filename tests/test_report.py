"""The HTML report and its charts, from a seeded database alone."""
from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest
from PIL import Image
from seed_db import (
    REFERENCE_MODELS,
    figures,
    keep_report,
    parse_page,
    seed_sweep,
    seeded_copy,
)

from sweep_service.cli import main
from sweep_service.coordinator.store import ResultStore
from sweep_service.report import charts, write_report
from sweep_service.report.page import render_page
from sweep_service.report.results import load_results

FAILED = [("googlenet", "fpgm", 0.8), ("densenet121", "l1norm", 0.7)]
GRID_CHARTS = ["accuracy_vs_rate.png", "accuracy_pruned_vs_rate.png", "param_reduction_vs_rate.png",
               "accuracy_vs_sparsity.png", "accuracy_vs_parameters.png", "accuracy_vs_macs.png",
               "accuracy_vs_latency.png"]
DATASET = "synthetic CIFAR-10 format"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The full reference grid rendered once: 7 models x 3 pruners x 8 rates + 7 baselines."""
    from sweep_service.worker import data  # noqa: F401  (the coordinator has it loaded: time the report alone)

    root = tmp_path_factory.mktemp("report")
    db, sweep_id = seeded_copy(root, failed=FAILED)
    started = time.perf_counter()
    index = write_report(db, root / "report", sweep_id=sweep_id)
    cold = time.perf_counter() - started
    started = time.perf_counter()
    write_report(db, root / "report", sweep_id=sweep_id)
    warm = time.perf_counter() - started
    print(f"\nfull grid report: {cold:.1f} s first, {warm:.1f} s again")
    keep_report("reference", index.parent)
    return dict(db=db, index=index, out=index.parent, cold=cold, warm=warm, sweep_id=sweep_id)


def _check_png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        width, height = im.size
        colours = im.convert("RGB").getcolors(maxcolors=1 << 20)
    assert 700 <= width <= 2400 and 450 <= height <= 2000, f"{path.name} is {width}x{height}"
    assert len(colours) > 50, f"{path.name} looks blank"
    assert path.stat().st_size > 20_000


def test_full_grid_renders_in_seconds_with_every_chart(reference):
    assert reference["cold"] < 25, f"first render took {reference['cold']:.1f} s"
    assert reference["warm"] < 3, f"an unchanged report took {reference['warm']:.1f} s"
    expected = GRID_CHARTS + [f"model_{m}.png" for m in REFERENCE_MODELS]
    pngs = sorted(p.name for p in reference["out"].glob("*.png"))
    assert pngs == sorted(expected)
    for name in expected:
        _check_png(reference["out"] / name)
    # No temporary files are left behind.
    assert sorted(p.name for p in reference["out"].iterdir() if p.name.startswith(".")) == [".charts.json"]


def test_page_shows_tables_metadata_and_relative_links(reference):
    html = reference["index"].read_text()
    page = parse_page(html)
    srcs = [img["src"] for img in page.images]
    assert len(srcs) == 14
    for src in srcs:
        assert "://" not in src and not src.startswith("/")
        assert (reference["out"] / src.split("?")[0]).is_file()
    assert all(img.get("alt") and img.get("width") and img.get("height") for img in page.images)
    assert not page.live  # finished: no reload
    # A row per completed trial, per model, per failed trial.
    assert len(page.tables["trials"]) == 7 + 7 * 3 * 8 - 2
    assert [row[0] for row in page.tables["best-table"]] == list(REFERENCE_MODELS)
    failed = page.tables["failed-table"]
    assert sorted((r[0], r[1], r[2]) for r in failed) == [("densenet121", "l1norm", "70%"),
                                                         ("googlenet", "fpgm", "80%")]
    assert all("speedup failed: RuntimeError" in r[-1] for r in failed)
    pareto = page.tables["pareto-table"]
    assert pareto and all(r[0] in REFERENCE_MODELS for r in pareto)
    assert any("parameters" in " ".join(r) for r in pareto)
    # Every recorded figure of a trial is in its row.
    resnet = next(r for r in page.tables["trials"] if r[:3] == ["resnet50", "fpgm", "30%"])
    f = figures("resnet50", "fpgm", 0.3)
    assert f"{f['accuracy'] * 100:.1f}%" in resnet
    assert f"{f['latency_ms']:.3g} ms" in resnet
    # Metadata: data set, weights, versions, config, times, counts.
    for text in (DATASET, "ImageNet-pretrained", "2.14.1", "nni", "&#34;image_size&#34;: 64",
                 "173 completed, 2 failed, 0 skipped, 0 running, 0 pending", "175 of 175 trials done",
                 "generated synthetic data", reference["sweep_id"], "started:", "finished:"):
        assert text in html, text
    assert "trials.csv" in page.links and (reference["out"] / "trials.csv").is_file()


def test_charts_name_the_data_set_and_start_at_the_baseline(reference):
    results = load_results(reference["db"])
    figure = charts.accuracy_vs_rate(results)
    texts = " ".join(t.get_text() for t in figure.texts)
    assert DATASET in texts and "ImageNet-pretrained" in texts
    panels = [ax for ax in figure.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["pruner: l1norm", "pruner: l2norm", "pruner: fpgm"]
    for ax in panels:
        curves = [line for line in ax.lines if len(line.get_xdata()) > 2]
        assert len(curves) == 7  # one per model
        assert all(line.get_xdata()[0] == 0.0 for line in curves)  # the baseline point
        assert "%" in ax.get_xlabel()
    assert "%" in panels[0].get_ylabel()
    reduction = charts.reduction_vs_rate(results)
    for ax in reduction.axes:
        curves = [line for line in ax.lines if len(line.get_xdata()) > 2]
        assert all(line.get_xdata()[0] == 0.0 and line.get_ydata()[0] == 0.0 for line in curves)
    # Seven models, seven distinct colour + marker pairs; the legend sits outside the plots.
    assert len({tuple(charts.model_style(results, m).values()) for m in results.models}) == 7
    legend = figure.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == list(REFERENCE_MODELS)
    for cost in ("params_after", "macs_after", "latency_ms"):
        fig = charts.tradeoff_chart(results, cost)
        assert DATASET in " ".join(t.get_text() for t in fig.texts)
        assert "Pareto front" in [t.get_text() for t in fig.legends[0].get_texts()]


def test_failed_trials_stay_out_of_the_charts(reference):
    results = load_results(reference["db"])
    points = dict(results.curve("googlenet", "fpgm", "accuracy"))
    assert 0.8 not in points and 0.7 in points


def test_running_sweep_shows_progress_and_refreshes_incrementally(tmp_path):
    db = tmp_path / "r.db"
    sweep_id = seed_sweep(db, models=["resnet18", "mobilenet_v2", "vgg16"], pruners=["l1norm", "fpgm"],
                          rates=[0.2, 0.5], done=8, running=2, status="running", failed=[("resnet18", "fpgm", 0.5)])
    out = tmp_path / "report"
    html = write_report(db, out).read_text()
    page = parse_page(html)
    assert page.live
    assert "8 of 15 trials done" in html and "2 running" in html and "5 pending" in html
    assert len(page.tables["trials"]) == 7
    assert (out / "model_resnet18.png").is_file() and (out / "model_mobilenet_v2.png").is_file()
    assert not (out / "model_vgg16.png").exists()  # nothing of vgg16 is done yet
    before = json.loads((out / ".charts.json").read_text())
    stamp = (out / "model_resnet18.png").stat().st_mtime_ns

    # One more trial of mobilenet_v2 finishes: its chart and the overview charts change;
    # resnet18's chart is not redrawn.
    store = ResultStore(db)
    row = next(t for t in store.trials(sweep_id, status="running") if t["model"] == "mobilenet_v2")
    store.record(sweep_id, row["key"], figures(row["model"], row["pruner"], row["rate"]))
    store.engine.dispose()
    started = time.perf_counter()
    write_report(db, out)
    after = json.loads((out / ".charts.json").read_text())
    assert time.perf_counter() - started < 10
    assert after["model_resnet18.png"] == before["model_resnet18.png"]
    assert (out / "model_resnet18.png").stat().st_mtime_ns == stamp
    assert after["model_mobilenet_v2.png"] != before["model_mobilenet_v2.png"]
    assert after["accuracy_vs_rate.png"] != before["accuracy_vs_rate.png"]
    assert len(parse_page((out / "index.html").read_text()).tables["trials"]) == 8

    # The sweep ends: the page stops reloading itself.
    store = ResultStore(db)
    store.end_sweep(sweep_id, "incomplete")
    store.engine.dispose()
    assert not parse_page(render_page(load_results(db), [], out)).live


def test_a_sweep_whose_coordinator_was_killed_is_not_shown_as_running(tmp_path):
    """SIGKILL leaves the sweep `running` in the database; its lock's heartbeat goes stale
    (or there is no lock), and the page says the sweep does not run instead of watching it."""
    db = tmp_path / "r.db"
    seed_sweep(db, models=["resnet18"], pruners=["l1norm"], rates=[0.5], done=1, running=1, status="running")
    assert parse_page(render_page(load_results(db), [], tmp_path)).live
    with sqlite3.connect(db) as con:
        con.execute("UPDATE sweep_locks SET heartbeat_at = '2026-01-02 03:04:05.000000'")
    html = render_page(load_results(db), [], tmp_path)
    page = parse_page(html)
    assert not page.live and "live-status" not in html
    assert 'badge interrupted">not running<' in html
    assert "no coordinator runs it" in html and "last heartbeat 2026-01-02 03:04:05 UTC" in html
    with sqlite3.connect(db) as con:
        con.execute("DELETE FROM sweep_locks")
    assert not parse_page(render_page(load_results(db), [], tmp_path)).live


def test_sweep_without_completed_trials(tmp_path):
    db = tmp_path / "e.db"
    seed_sweep(db, models=["resnet18"], pruners=["l1norm"], rates=[0.5], done=0, running=1, status="running")
    index = write_report(db, tmp_path / "report")
    html = index.read_text()
    assert "No trial has completed yet" in html
    assert "0 of 2 trials done" in html and "1 running" in html and "1 pending" in html
    assert not list(index.parent.glob("*.png"))
    assert parse_page(html).live


def test_single_model_and_missing_figures(tmp_path):
    db = tmp_path / "s.db"
    sweep_id = seed_sweep(db, models=["resnet18"], pruners=["l1norm"], rates=[0.5], links=False)
    store = ResultStore(db)
    pruned = store.trials(sweep_id, kind="pruned")[0]
    store.record(sweep_id, pruned["key"], {"latency_ms": None, "macs_after": None, "model_size_bytes": None})
    store.engine.dispose()
    index = write_report(db, tmp_path / "report")
    out = index.parent
    assert sorted(p.name for p in out.glob("*.png")) == sorted(GRID_CHARTS + ["model_resnet18.png"])
    for png in out.glob("*.png"):
        _check_png(png)
    rows = parse_page(index.read_text()).tables["trials"]
    assert len(rows) == 2
    pruned_row = next(r for r in rows if r[1] == "l1norm")
    assert pruned_row[8] == "-"  # MACs not measured
    assert pruned_row[5].endswith(" pt") and pruned_row[5] != "-"  # drop computed from the baseline


def test_constraints_in_the_config_give_a_recommendation(tmp_path):
    db = tmp_path / "c.db"
    seed_sweep(db, models=["resnet18", "mobilenet_v2"], pruners=["fpgm"], rates=[0.3, 0.6],
               constraints={"max_params": 2_000_000, "min_accuracy": 0.8})
    html = render_page(load_results(db), [], tmp_path)  # the page alone: no charts needed here
    page = parse_page(html)
    assert "Recommendation for the limits in the config" in html
    assert "mobilenet_v2 fpgm 30%" in html
    assert page.tables["recommended"][0][:3] == ["mobilenet_v2", "fpgm", "30%"]

    db2 = tmp_path / "none.db"
    seed_sweep(db2, models=["resnet18"], pruners=["fpgm"], rates=[0.3], constraints={"max_params": 1000})
    html = render_page(load_results(db2), [], tmp_path)
    assert "No completed trial meets every limit" in html
    assert "The limit that excludes most: <b>parameters &lt;= 1 k</b>" in html


def test_cli_report_defaults_to_the_sweeps_output_dir(tmp_path, capsys):
    db = tmp_path / "results" / "sweep.db"
    seed_sweep(db, models=["resnet18"], pruners=["l1norm"], rates=[0.5], output_dir=tmp_path / "out")
    report = tmp_path / "out" / "report"
    report.mkdir(parents=True)  # with a chart an earlier report drew that no longer applies
    (report / "model_gone.png").write_bytes(b"old")
    (report / ".charts.json").write_text(json.dumps({"model_gone.png": "x"}))
    assert main(["report", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert f"report: {report / 'index.html'}" in out
    assert "2 completed, 0 failed, 0 skipped, 0 running, 0 pending; 8 charts" in out
    assert (report / "index.html").is_file()
    assert not (report / "model_gone.png").exists()
    assert sorted(p.name for p in report.iterdir() if p.name.startswith(".")) == [".charts.json"]


def test_cli_report_errors(tmp_path, capsys):
    assert main(["report", "--db", str(tmp_path / "missing.db")]) == 2
    assert "no results database" in capsys.readouterr().err


@pytest.mark.parametrize("value, text", [
    (0.3, "30%"), (0.125, "12.5%"), (0.0, "0%"),
    # never rounded to 0 % or 100 % when the rate is neither (a grid of hundreds of rates)
    (0.9999, "99.99%"), (0.99999999, "99.999999%"), (1e-7, "0.00001%"),
])
def test_rate_labels(value, text):
    from sweep_service.report import fmt
    from sweep_service.spec import TrialSpec

    assert fmt.rate(value) == text
    spec = TrialSpec(kind="pruned", model="resnet18", pruner="l1norm", rate=value, dataset="synthetic",
                     weights="none", image_size=32, epochs=1, batch_size=64, eval_batch_size=64, optimizer={},
                     augment=False, seed=0, train_subset=None, test_subset=None, calibration_batches=1, layers={},
                     prune_from="baseline", baseline_key=None)
    assert spec.label == f"resnet18 l1norm {text}"
