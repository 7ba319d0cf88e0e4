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


def test_each_pruned_trial_links_to_the_baseline_of_its_own_seed(tiny_config, tmp_path):
    config = load_config(tiny_config(repeats=2)[0])
    specs = list(expand(config))
    store = ResultStore(tmp_path / "r.db")
    store.begin_sweep(sweep_id=config.sweep_id(), name=config.name, config_json=config.to_json(),
                      dataset=config.dataset, weights=config.weights, versions={})
    sweep_id = config.sweep_id()
    store.add_trials(sweep_id, specs)
    for spec in specs:
        store.mark_running(sweep_id, spec.key)
        accuracy = (0.8 if spec.seed == 0 else 0.6) - (0.1 if spec.kind == "pruned" else 0.0)
        store.record(sweep_id, spec.key, {"status": "completed", "accuracy": accuracy})
    store.link_baselines(sweep_id)
    rows = store.trials(sweep_id, kind="pruned")
    assert {r["seed"] for r in rows} == {0, 1}
    for row in rows:
        assert row["baseline_accuracy"] == (0.8 if row["seed"] == 0 else 0.6)
        assert abs(row["accuracy_drop"] - 0.1) < 1e-9


def test_rows_from_before_the_seed_column_get_their_seed_when_the_sweep_runs_again(tiny_config, tmp_path):
    config, specs, store = _setup(tiny_config, tmp_path)
    sweep_id = config.sweep_id()
    store.add_trials(sweep_id, specs)
    store.engine.dispose()
    with sqlite3.connect(tmp_path / "r.db") as con:  # as written before the column existed
        con.execute("ALTER TABLE trials DROP COLUMN seed")
    reopened = ResultStore(tmp_path / "r.db")
    assert {r["seed"] for r in reopened.trials(sweep_id)} == {None}
    assert reopened.add_trials(sweep_id, specs) == 0
    assert {r["seed"] for r in reopened.trials(sweep_id)} == {0}
