"""Report and `recommend` over deployable variants (fp32/fp16/int8 ONNX files measured on
an edge node), from seeded databases through the real ResultStore."""
from __future__ import annotations

import sqlite3
import urllib.parse
from pathlib import Path

import pytest
from seed_db import EDGE_NODE, parse_page, seed_sweep, seed_variants

from sweep_service.cli import main
from sweep_service.report import write_report
from sweep_service.report.recommend import Limits, misses, recommend
from sweep_service.report.results import load_results, trial_label

MODELS, PRUNERS, RATES = ["resnet18", "mobilenet_v2"], ["l1norm", "level"], [0.3, 0.5]


@pytest.fixture(scope="module")
def edge_db(tmp_path_factory) -> Path:
    """2 models x (l1norm structured, level unstructured) x 2 rates x fp32/fp16/int8, measured on 'edge-1'."""
    root = tmp_path_factory.mktemp("edge-report")
    sweep_id = seed_sweep(root / "results.db", models=MODELS, pruners=PRUNERS, rates=RATES,
                          output_dir=root / "out", unstructured=["level"])
    seed_variants(root / "results.db", sweep_id, root / "out" / "models")
    return root / "results.db"


@pytest.fixture(scope="module")
def page(edge_db):
    index = write_report(edge_db, edge_db.parent / "out" / "report")
    return index, parse_page(index.read_text())


def test_report_charts_accuracy_against_size_and_edge_latency_per_format(page):
    index, parsed = page
    shown = {Path(image["src"].split("?")[0]).name for image in parsed.images}
    assert {"variants_accuracy_vs_size.png", "variants_accuracy_vs_latency.png"} <= shown
    text = index.read_text()
    assert "edge-1 (Cortex-A76, 1 CPUs, aarch64)" in text


def test_every_variant_is_a_row_linking_its_onnx_file(page, edge_db):
    index, parsed = page
    rows = parsed.tables["variants-table"]
    assert len(rows) == (len(MODELS) * len(PRUNERS) * len(RATES) + len(MODELS)) * 3
    assert {row[4] for row in rows} == {"fp32", "fp16", "int8"}
    assert all(row[13] == "edge-1 (Cortex-A76, 1 CPUs, aarch64)" for row in rows)
    links = {link for link in parsed.links if link.endswith(".onnx")}  # the Pareto table links some again
    assert len(links) == len(rows) and {urllib.parse.unquote(link).split("/")[-1] for link in links} == {
        row[-1] for row in rows}
    for link in links:  # relative to the report folder, and the file is there
        assert not link.startswith("/")
        assert (index.parent / urllib.parse.unquote(link)).resolve().is_file(), link


def test_rows_say_whether_parameters_were_removed_or_weights_zeroed(page):
    _, parsed = page
    for table in ("variants-table", "trials"):
        pruning = {(row[1], row[3]) for row in parsed.tables[table]}
        assert ("level", "30% weights zeroed") in pruning and ("level", "50% weights zeroed") in pruning
        assert any(p == "l1norm" and text.endswith("params removed") for p, text in pruning)
        assert not any(p == "level" and "removed" in text for p, text in pruning)


def test_variant_pareto_front_spans_pruning_and_quantization(edge_db, page):
    results = load_results(edge_db)
    front = results.variant_pareto_set()
    assert {v["format"] for v in front} >= {"fp32", "int8"}
    for v in front:  # nothing beats a front variant on both accuracy and its cost
        for cost in ("model_size_bytes", "latency_ms"):
            if (cost == "model_size_bytes") == ("size" in v["fronts"]):
                assert not any(o["accuracy"] > v["accuracy"] and o[cost] < v[cost] for o in results.variant_summaries)
    assert len(page[1].tables["variant-pareto-table"]) == len(front)


def test_int8_rows_compare_with_their_own_fp32_on_the_same_node(edge_db):
    results = load_results(edge_db)
    for v in results.variants:
        fp32 = next(o for o in results.variants if o["trial_key"] == v["trial_key"] and o["format"] == "fp32")
        assert v["vs_fp32_accuracy"] == pytest.approx(v["accuracy"] - fp32["accuracy"])
        assert v["vs_fp32_latency"] == pytest.approx(v["latency_ms"] / fp32["latency_ms"])
        assert v["batch_size"] == 1 and v["node_host"] == EDGE_NODE["node_host"]


def test_recommend_the_most_accurate_under_2_mb_and_5_ms_on_the_edge_node(edge_db):
    results = load_results(edge_db)
    limits = Limits(max_size_mb=2, max_latency_ms=5)
    rec = recommend(results, limits)
    fitting = [v for v in results.variant_summaries if not misses(v, limits)]
    assert fitting and rec.chosen is not None and rec.noun == "variants"
    assert rec.chosen["accuracy"] == max(v["accuracy"] for v in fitting)
    assert rec.chosen["model_size_bytes"] <= 2e6 and rec.chosen["latency_ms"] <= 5
    assert rec.candidates == len(results.variant_summaries)


def test_recommend_cli_names_the_format_file_and_measuring_node(edge_db, capsys):
    assert main(["recommend", "--db", str(edge_db), "--max-size-mb", "2", "--max-latency-ms", "5"]) == 0
    out = capsys.readouterr().out
    chosen = recommend(load_results(edge_db), Limits(max_size_mb=2, max_latency_ms=5)).chosen
    assert f"recommended: {trial_label(chosen)}" in out and trial_label(chosen).endswith(chosen["format"])
    assert f"format: {chosen['format']} in onnxruntime 1.32.0; file: {chosen['path']}" in out
    assert "latency measured on edge-1 (Cortex-A76, 1 CPUs, aarch64), batch 1, 1 thread(s)" in out
    assert "of 30 completed variants that meet every limit" in out


def test_recommend_restricted_to_a_format(edge_db, capsys):
    assert main(["recommend", "--db", str(edge_db), "--format", "fp16"]) == 0
    out = capsys.readouterr().out
    assert "recommended: resnet18 baseline fp16" in out or "recommended: mobilenet_v2 baseline fp16" in out
    assert "of all 10 completed fp16 variants" in out


def test_unmeasured_or_failed_variants_are_never_chosen_past_a_latency_limit(tmp_path):
    sweep_id = seed_sweep(tmp_path / "r.db", models=["resnet18"], pruners=["l1norm"], rates=[0.5],
                          output_dir=tmp_path / "out")
    seed_variants(tmp_path / "r.db", sweep_id, tmp_path / "out" / "models", measure=False, failed_format="int8")
    results = load_results(tmp_path / "r.db")
    assert {(v["kind"], v["format"]) for v in results.variants} == {
        ("baseline", "fp32"), ("baseline", "fp16"), ("baseline", "int8"), ("pruned", "fp32"), ("pruned", "fp16")}
    rec = recommend(results, Limits(max_latency_ms=100))
    assert rec.chosen is None and rec.excluded_by == {"max_latency_ms": 5}
    assert "latency not measured" in "\n".join(rec.lines())
    assert recommend(results, Limits(max_size_mb=30)).chosen["format"] == "fp16"


def test_a_database_from_before_the_variants_reports_and_recommends(tmp_path, capsys):
    db = tmp_path / "old.db"
    seed_sweep(db, models=["resnet18"], pruners=["l1norm"], rates=[0.5], output_dir=tmp_path / "out")
    with sqlite3.connect(db) as c:
        for table in ("measurements", "measurement_runs", "variants"):
            c.execute(f"DROP TABLE {table}")
    assert main(["recommend", "--db", str(db), "--max-size-mb", "50"]) == 0
    assert "recommended: resnet18" in capsys.readouterr().out
    assert main(["recommend", "--db", str(db), "--format", "int8"]) == 2
    assert "made no deployable variants" in capsys.readouterr().err
    results = load_results(db)
    assert results.variants == [] and results.variant_pareto_set() == []
    index = write_report(db, tmp_path / "report")
    parsed = parse_page(index.read_text())
    assert "variants-table" not in parsed.tables and parsed.tables["trials"]
