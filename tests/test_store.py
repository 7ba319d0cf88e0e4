"""The SQLite store: one row per trial, idempotent inserts, resumable state; only the
service's own files are written, read-only commands change nothing, and read-only media
can be read."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest
from seed_db import seed_sweep

from sweep_service.cli import main
from sweep_service.coordinator.config import load_config
from sweep_service.coordinator.grid import expand
from sweep_service.coordinator.store import APPLICATION_ID, SCHEMA_VERSION, ResultStore, StoreError


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
    assert store.counts(config.sweep_id()) == {"pending": len(specs), "running": 0, "completed": 0, "failed": 0,
                                               "skipped": 0}


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


# Whose file it is, and read-only use ---------------------------------------------------------
READ_COMMANDS = (["status"], ["report", "--out", "{out}"], ["export"], ["recommend"])


def _snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file of `folder` with its content hash and modification time."""
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.iterdir()) if p.is_file()}


def _journal_mode(path: Path) -> str:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as con:
        return con.execute("PRAGMA journal_mode").fetchone()[0]


def _seeded(tmp_path: Path) -> tuple[Path, str]:
    db = tmp_path / "results" / "sweep.db"
    return db, seed_sweep(db, models=["resnet18"], pruners=["l1norm"], rates=[0.3, 0.6])


def _read_commands(db: Path, out: Path) -> list[list[str]]:
    return [[*command[:1], "--db", str(db), *(a.format(out=out) for a in command[1:])] for command in READ_COMMANDS]


def test_another_programs_database_is_refused_by_name_and_left_as_it_was(tiny_config, tmp_path, capsys):
    """The issue's case: a file with an unrelated `trials` table. Before, `status` added 40
    columns to it, created `sweeps` and switched it to WAL; `run` then wrote into it."""
    folder = tmp_path / "theirs"
    folder.mkdir()
    db = folder / "notes.db"
    with contextlib.closing(sqlite3.connect(db)) as con, con:
        con.execute("CREATE TABLE trials (id INTEGER PRIMARY KEY, patient TEXT, outcome TEXT)")
        con.execute("INSERT INTO trials (patient, outcome) VALUES ('p1', 'ok')")
    before = _snapshot(folder)

    for command in _read_commands(db, tmp_path / "report"):
        assert main(command) == 2, command
        err = capsys.readouterr().err
        assert f"{db} is not a sweep-service results database" in err and "(trials)" in err, err
    path, _ = tiny_config(database=str(db))
    assert main(["run", str(path)]) == 2
    assert f"{db} is not a sweep-service results database" in capsys.readouterr().err

    assert _snapshot(folder) == before  # no byte changed, no journal file left beside it
    assert _journal_mode(db) == "delete"


def test_a_database_marked_as_another_applications_is_refused_from_its_header(tmp_path, capsys):
    db = tmp_path / "other.db"
    with contextlib.closing(sqlite3.connect(db)) as con, con:
        con.execute(f"PRAGMA application_id = {0x464F5346}")  # another program's mark
        con.execute("CREATE TABLE sweeps (sweep_id TEXT, config_json TEXT)")
        con.execute("CREATE TABLE trials (sweep_id TEXT, key TEXT, spec_json TEXT)")
    with pytest.raises(StoreError, match=r"another application's SQLite database \(application_id 0x464f5346\)"):
        ResultStore(db)
    assert main(["status", "--db", str(db)]) == 2
    assert "another application's" in capsys.readouterr().err


def test_run_marks_the_file_and_its_schema_version(tmp_path):
    db = tmp_path / "new" / "sweep.db"
    ResultStore(db).close()
    with contextlib.closing(sqlite3.connect(db)) as con:
        assert con.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_read_only_commands_leave_the_services_own_database_unchanged(tmp_path, capsys):
    db, _ = _seeded(tmp_path)
    before = _snapshot(db.parent)
    for command in _read_commands(db, tmp_path / "report"):
        assert main(command) in (0, 1), (command, capsys.readouterr().err)
    assert "resnet18" in capsys.readouterr().out
    assert _snapshot(db.parent) == before


def test_an_earlier_versions_database_is_read_as_it_is_and_upgraded_only_by_run(tiny_config, tmp_path, capsys):
    db, sweep_id = _seeded(tmp_path)
    with contextlib.closing(sqlite3.connect(db)) as con, con:  # as written before the marks and `compute`
        con.execute("PRAGMA application_id = 0")
        con.execute("PRAGMA user_version = 0")
        con.execute("DROP TABLE sweep_locks")
        con.execute("ALTER TABLE trials DROP COLUMN compute")
    before = _snapshot(db.parent)
    assert main(["status", "--db", str(db)]) == 0
    assert "resnet18" in capsys.readouterr().out
    assert main(["export", "--db", str(db), "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines()[0].count("compute") == 1  # the column, empty
    assert _snapshot(db.parent) == before

    ResultStore(db).close()  # what `run` does first
    with contextlib.closing(sqlite3.connect(db)) as con:
        assert con.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert "compute" in {row[1] for row in con.execute("PRAGMA table_info(trials)")}
        assert con.execute("SELECT count(*) FROM trials").fetchone()[0] == 3


def test_a_database_of_a_newer_schema_is_not_written(tmp_path):
    db, _ = _seeded(tmp_path)
    with contextlib.closing(sqlite3.connect(db)) as con, con:
        con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="written by a newer sweep-service"):
        ResultStore(db)
    assert ResultStore.open_read_only(db).sweep()["status"] == "finished"


@pytest.mark.parametrize("damage, message", [
    (lambda db: db.write_bytes(b"name,accuracy\nresnet18,0.9\n" * 10), "is not an SQLite database"),
    # a valid header over pages of garbage
    (lambda db: db.write_bytes(db.read_bytes()[:100] + os.urandom(db.stat().st_size - 100)), "damaged"),
])
def test_a_corrupt_database_is_an_error_with_its_name(tiny_config, tmp_path, capsys, damage, message):
    db, _ = _seeded(tmp_path)
    damage(db)
    path, _ = tiny_config(database=str(db))
    for command in (["run", str(path)], *_read_commands(db, tmp_path / "report")):
        assert main(command) == 2, command
        err = capsys.readouterr().err
        assert str(db) in err and "Traceback" not in err, (command, err)
    assert main(["run", str(path)]) == 2
    assert message in capsys.readouterr().err


def test_a_folder_given_as_the_database_is_an_error(tiny_config, tmp_path, capsys):
    path, _ = tiny_config(database=str(tmp_path))
    assert main(["run", str(path)]) == 2
    assert f"the database path {tmp_path} is a folder; give a file path, e.g. --db {tmp_path / 'sweep.db'}" in \
        capsys.readouterr().err
    assert main(["status", "--db", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_read_only_media(tiny_config, tmp_path, mount_point, capsys):
    """A results folder on a read-only mount (the compose `report` service mounts it `:ro`):
    status, report (written elsewhere), export and recommend read it; run names the path it
    cannot write."""
    db, _ = _seeded(tmp_path)
    shutil.copy(db, mount_point.path / "sweep.db")  # a WAL database with no -shm beside it
    mount_point.remount_read_only()
    on_media = mount_point.path / "sweep.db"
    assert _journal_mode(db) == "wal"
    for command in _read_commands(on_media, tmp_path / "report"):
        assert main(command) in (0, 1), (command, capsys.readouterr().err)
        assert "error" not in capsys.readouterr().err
    assert (tmp_path / "report" / "index.html").is_file()
    assert main(["export", "--db", str(on_media), "--format", "json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["trials"]) == 3

    path, _ = tiny_config(database=str(on_media))
    assert main(["run", str(path)]) == 2
    assert f"cannot write the database {on_media}: its folder {mount_point.path} is read-only" in \
        capsys.readouterr().err
