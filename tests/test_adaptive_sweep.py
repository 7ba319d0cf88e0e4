"""An adaptive sweep through the CLI on a local Ray cluster, killed (SIGKILL, coordinator and
cluster) once some trials have finished their first rung, then run again: it takes up where
it was, continues waiting trials from their rung checkpoints, and trains no finished rung
again. Real NNI pruning, real SQLite, the real CIFAR-10 reader on generated files."""
from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import REPO, run_cli

pytestmark = pytest.mark.slow


def _query(db: Path, sql: str) -> list[dict]:
    """Rows of `sql`, read-only; none while the coordinator has not created the database."""
    if not db.is_file():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute(sql)]
    except sqlite3.OperationalError:  # its tables are not there yet
        return []
    finally:
        con.close()


def _kill_when(sweep: subprocess.Popen, ready, within_s: float) -> None:
    """SIGKILL the coordinator and every process it started (its Ray cluster) once `ready()`."""
    deadline = time.time() + within_s
    while not ready():
        assert sweep.poll() is None, "the sweep ended before it could be killed"
        assert time.time() < deadline, "the sweep never reached the state to kill it in"
        time.sleep(0.2)
    coordinator = psutil.Process(sweep.pid)
    family = [coordinator, *coordinator.children(recursive=True)]
    for process in family:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(family, timeout=30)


def test_an_adaptive_sweep_killed_mid_way_resumes_without_recomputing(tiny_config):
    path, config = tiny_config(name="adaptive", pruners=["l1norm", "fpgm"], rates=[0.2, 0.4, 0.6, 0.8],
                               baseline_epochs=1, finetune_epochs=2, batch_size=32, train_subset=320,
                               test_subset=200, search="adaptive", adaptive={"max_drop": 0.1, "rungs": [0.25]})
    db = Path(config["database"])
    sweep = subprocess.Popen([sys.executable, "-m", "sweep_service", "run", str(path)], cwd=REPO, text=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _kill_when(sweep, lambda: len(_query(db, "SELECT * FROM rungs")) >= 2, within_s=600)
    finally:
        sweep.kill()
        sweep.wait()

    rungs_before = {(r["key"], r["budget"]): r for r in _query(db, "SELECT * FROM rungs")}
    rows_before = {r["key"]: r for r in _query(db, "SELECT * FROM trials")}
    waiting = {key for key, _ in rungs_before if rows_before[key]["status"] != "completed"}
    assert waiting, "no trial was waiting at a rung when the sweep was killed"

    result = run_cli("run", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {r["key"]: r for r in _query(db, "SELECT * FROM trials")}
    labels = {key: f"{r['model']} {r['pruner']} {r['rate']:.0%}" for key, r in rows.items()}

    # Nothing finished before the kill ran again: rung results are as they were, and no
    # trial that had finished its first rung trained it again.
    rungs_after = {(r["key"], r["budget"]): r for r in _query(db, "SELECT * FROM rungs")}
    for where, before in rungs_before.items():
        after = rungs_after[where]
        assert (after["accuracy"], after["finished_at"]) == (before["accuracy"], before["finished_at"])
    second_rungs = set(re.findall(r"rung +(\S+ \S+ \d+%) to 25%", result.stdout))
    assert not second_rungs & {labels[key] for key, _ in rungs_before}
    for key, before in rows_before.items():
        if before["status"] == "completed":
            assert (rows[key]["started_at"], rows[key]["attempts"]) == (before["started_at"], before["attempts"])

    # The waiting trials were decided, and those that went on continued from their checkpoints.
    continued = [key for key in waiting if rows[key]["budget"] == 1.0]
    assert continued, result.stdout
    for key in continued:
        assert f"done   {labels[key]} to 100%" in result.stdout
        assert rows[key]["attempts"] == rows_before[key]["attempts"] + 1  # one more task: the rest of the fine-tune
        assert rows[key]["rung"] == 2 and rows[key]["stop_reason"] is None
    for key in waiting - set(continued):
        assert rows[key]["status"] == "completed" and rows[key]["budget"] == 0.25
        assert rows[key]["stop_reason"].startswith(("below the front after 25% of the fine-tune",
                                                     "cannot clear the floor after 25% of the fine-tune"))

    # Every trial ended: in full, stopped short with its reason, or skipped with its reason.
    assert {r["status"] for r in rows.values()} <= {"completed", "skipped"}, result.stdout
    short = [r for r in rows.values() if r["status"] == "skipped" or (r["budget"] or 1.0) < 1.0]
    assert all(r["stop_reason"] for r in short)
    # Every completed trial ships its variant, made once: at its end, or, stopped at a rung,
    # from the model saved there.
    variants = _query(db, "SELECT trial_key, format, error FROM variants")
    assert sorted((v["trial_key"], v["format"]) for v in variants) == sorted(
        (key, "fp32") for key, r in rows.items() if r["status"] == "completed")
    assert not [v for v in variants if v["error"]]
    stopped = [r for r in rows.values() if r["status"] == "completed" and r["budget"] < 1.0]
    made_after = f"making {len(stopped)} missing variants of {len(stopped)} finished trials from their saved models"
    assert (made_after in result.stdout) == bool(stopped), result.stdout
    # Every trial has ended, so no checkpoint is kept.
    assert not list((Path(config["output_dir"]) / "checkpoints").iterdir())
    assert not [r for r in _query(db, "SELECT * FROM rungs") if r["checkpoint_path"]]
