"""The SQLite store: one row per trial, idempotent inserts, resumable state."""
from __future__ import annotations

import sqlite3

from sweep_service.coordinator.config import load_config
from sweep_service.coordinator.grid import expand
from sweep_service.coordinator.store import ResultStore


def _setup(tiny_config, tmp_path):
    config = load_config(tiny_config()[0])
    specs = list(expand(config))
    store = ResultStore(tmp_path / "r.db")
    store.begin_sweep(sweep_id=config.sweep_id(), name=config.name, config_json=config.to_json(),
                      dataset=config.dataset, weights=config.weights, versions={"torch": "x"})
    return config, specs, store


def test_trials_table_schema_and_idempotent_insert(tiny_config, tmp_path):
    config, specs, store = _setup(tiny_config, tmp_path)
    assert store.add_trials(config.sweep_id(), specs) == len(specs)
    assert store.add_trials(config.sweep_id(), specs) == 0
    columns = {row[1] for row in sqlite3.connect(tmp_path / "r.db").execute("PRAGMA table_info(trials)")}
    assert {"sweep_id", "model", "pruner", "rate", "status", "accuracy", "params_before",
            "params_after", "param_reduction", "macs_before", "macs_after", "model_size_bytes",
            "latency_ms", "worker_host", "error", "time_finetune_s", "grouping", "allocation", "accuracy_pruned",
            "channel_sparsity", "pruned_channels_json", "speedup_max_abs_diff", "time_group_s"} <= columns
    # how a pruned trial's channels are chosen is on its row from the start; a baseline prunes nothing
    rows = store.trials(config.sweep_id())
    assert {(r["kind"], r["grouping"], r["allocation"]) for r in rows} == {("baseline", None, None),
                                                                          ("pruned", "dependency", "uniform")}
    assert store.counts(config.sweep_id()) == {"pending": len(specs), "running": 0, "completed": 0, "failed": 0}


def test_record_link_baselines_and_reset(tiny_config, tmp_path):
    config, specs, store = _setup(tiny_config, tmp_path)
    sweep_id = config.sweep_id()
    store.add_trials(sweep_id, specs)
    baseline, pruned, other = specs[0], specs[1], specs[2]
    for spec in (baseline, pruned, other):
        store.mark_running(sweep_id, spec.key)
    store.record(sweep_id, baseline.key, {"status": "completed", "accuracy": 0.8})
    store.record(sweep_id, pruned.key, {"status": "completed", "accuracy": 0.75, "param_reduction": 0.3})
    store.link_baselines(sweep_id)
    rows = {r["key"]: r for r in store.trials(sweep_id)}
    assert rows[pruned.key]["baseline_accuracy"] == 0.8
    assert abs(rows[pruned.key]["accuracy_drop"] - 0.05) < 1e-9
    assert rows[other.key]["status"] == "running"
    assert store.reset_unfinished(sweep_id) == 1
    assert {r["key"]: r["status"] for r in store.trials(sweep_id)}[other.key] == "pending"
    sweep = store.sweep()
    assert sweep["sweep_id"] == sweep_id and sweep["dataset"] == "synthetic"


def test_a_database_from_an_earlier_version_gains_new_columns_and_keeps_its_rows(tiny_config, tmp_path):
    config, specs, store = _setup(tiny_config, tmp_path)
    sweep_id = config.sweep_id()
    store.add_trials(sweep_id, specs)
    store.mark_running(sweep_id, specs[0].key)
    store.record(sweep_id, specs[0].key, {"status": "completed", "accuracy": 0.8})
    store.engine.dispose()
    with sqlite3.connect(tmp_path / "r.db") as con:  # as written before these columns existed
        con.execute("ALTER TABLE trials DROP COLUMN compute")

    reopened = ResultStore(tmp_path / "r.db")
    columns = {row[1] for row in sqlite3.connect(tmp_path / "r.db").execute("PRAGMA table_info(trials)")}
    assert "compute" in columns
    rows = {row["key"]: row for row in reopened.trials(sweep_id)}
    assert len(rows) == len(specs) and rows[specs[0].key]["accuracy"] == 0.8
    assert rows[specs[0].key]["compute"] is None
    reopened.record(sweep_id, specs[0].key, {"status": "completed", "compute": "fp32-channels-last"})
    assert reopened.trials(sweep_id, kind="baseline")[0]["compute"] == "fp32-channels-last"


def _measured(variant_id: int, median: float, **node) -> dict:
    return dict(variant_id=variant_id, batch_size=1, threads=1, latency_ms=median, latency_p10_ms=median * 0.9,
                latency_p90_ms=median * 1.2, round_spread=0.05, round_medians_json="[1.0]", peak_rss_mb=90.0,
                node_host="box", node_id="n1", cpu_model="Cortex-A76", cpu_arch="aarch64", cpus=4.0,
                load_avg=0.1, **node)


def test_variants_and_their_measurements(tiny_config, tmp_path):
    from sweep_service.coordinator.measurement import _point_trials_at_fp32, needs_measuring

    config, specs, store = _setup(tiny_config, tmp_path)
    sweep_id, baseline = config.sweep_id(), specs[0]
    store.add_trials(sweep_id, specs)
    store.record(sweep_id, baseline.key, {"status": "completed", "accuracy": 0.8})
    for fmt in ("fp32", "int8"):
        model = tmp_path / f"m.{fmt}.onnx"
        model.write_bytes(b"x")
        store.record_variants(sweep_id, baseline.key, [dict(format=fmt, runtime="onnxruntime 1.32.0", path=str(model),
                                                            size_bytes=4 if fmt == "fp32" else 1, compressed_bytes=1,
                                                            accuracy=0.8, time_s=1.0)])
    variants = {v["format"]: v for v in store.variants(sweep_id)}
    assert set(variants) == {"fp32", "int8"} and variants["int8"]["model"] == "resnet18"
    assert needs_measuring(store, sweep_id) and store.measurements(sweep_id) == []

    run = store.begin_measurement(sweep_id, {"threads": 1}, on="edge")
    store.record_measurements(run, [_measured(variants["fp32"]["id"], 2.0), _measured(variants["int8"]["id"], 0.9)])
    assert store.measurements(sweep_id) == []  # the run has not finished
    store.end_measurement(run, "finished", seconds=3.0, variants=2)
    _point_trials_at_fp32(store, sweep_id, run)
    rows = {m["format"]: m for m in store.measurements(sweep_id)}
    assert rows["int8"]["latency_ms"] == 0.9 and rows["int8"]["cpu_model"] == "Cortex-A76"
    assert rows["fp32"]["trial_key"] == baseline.key and not needs_measuring(store, sweep_id)
    trial = store.trials(sweep_id, kind="baseline")[0]
    assert trial["latency_ms"] == 2.0 and trial["latency_source"] == (
        "onnxruntime 1.32.0 fp32, batch 1, 1 thread(s), on box (Cortex-A76)")
    assert store.measurement_runs(sweep_id)[0]["on"] == "edge"

    # a new fp32 file replaces the old: its measurements and the trial's latency go with it
    store.record_variants(sweep_id, baseline.key, [dict(format="fp32", path=variants["fp32"]["path"], size_bytes=5)])
    assert {m["format"] for m in store.measurements(sweep_id)} == {"int8"}
    assert store.trials(sweep_id, kind="baseline")[0]["latency_ms"] is None
    assert needs_measuring(store, sweep_id)
    assert [v["size_bytes"] for v in store.variants(sweep_id) if v["format"] == "fp32"] == [5]
