"""One coordinator per sweep: the lock in a real SQLite file, its heartbeat, and taking over
a dead coordinator's lock. The end-to-end refusal of a second `run` is in test_reliability.py."""
from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import timedelta

import psutil
import pytest

from sweep_service.coordinator import lock as lock_module
from sweep_service.coordinator.lock import STALE_AFTER_S, Holder, SweepLock, SweepLocked, stale_reason
from sweep_service.coordinator.store import ResultStore, utcnow


@pytest.fixture
def store(tmp_path):
    with ResultStore(tmp_path / "sweep.db") as store:
        yield store


def _holder(**changes) -> Holder:
    now = utcnow()
    fields = dict(sweep_id="s", token="t", host="other-host", pid=4242, pid_started=1.0, started_at=now,
                  heartbeat_at=now)
    return Holder(**{**fields, **changes})


def test_stale_reason_on_a_fake_clock():
    now = utcnow()
    alive = lambda pid, started: True  # noqa: E731
    dead = lambda pid, started: False  # noqa: E731
    fresh = _holder(heartbeat_at=now - timedelta(seconds=STALE_AFTER_S - 1))
    assert stale_reason(fresh, now, host="here", process_alive=dead) is None  # another host: heartbeat only
    old = _holder(heartbeat_at=now - timedelta(seconds=STALE_AFTER_S + 1))
    assert stale_reason(old, now, host="here", process_alive=alive) == f"no heartbeat for {STALE_AFTER_S + 1:.0f} s"
    here = _holder(host="here", heartbeat_at=now)
    assert stale_reason(here, now, host="here", process_alive=alive) is None
    assert stale_reason(here, now, host="here", process_alive=dead) == "its process 4242 on this host is gone"


def test_a_second_coordinator_of_the_same_sweep_is_refused_naming_the_holder(store):
    with SweepLock(store, "tiny-1"):
        with pytest.raises(SweepLocked) as info:
            SweepLock(store, "tiny-1").acquire()
        message = str(info.value)
        assert f"pid {os.getpid()} on host {socket.gethostname()}" in message
        assert "sweep tiny-1 is being run by another coordinator" in message
        assert f"status --db {store.path}" in message
        # another sweep in the same database is not affected
        with SweepLock(store, "other-2"):
            assert store.lock_holder("other-2")["pid"] == os.getpid()
    assert store.lock_holder("tiny-1") is None  # released
    SweepLock(store, "tiny-1").acquire().release()


def test_a_lock_without_heartbeat_is_taken_over(store):
    old = utcnow() - timedelta(seconds=STALE_AFTER_S + 5)
    store.insert_lock(dict(sweep_id="s", token="dead", host="gone-host", pid=1, pid_started=0.0, started_at=old,
                           heartbeat_at=old))
    with SweepLock(store, "s") as lock:
        holder, reason = lock.taken_over
        assert holder.host == "gone-host" and reason.startswith("no heartbeat for")
        assert store.lock_holder("s")["token"] == lock.token


def test_a_lock_of_a_process_gone_from_this_host_is_taken_over_at_once(store):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    store.insert_lock(dict(sweep_id="s", token="dead", host=socket.gethostname(), pid=child.pid,
                           pid_started=psutil.Process().create_time(), started_at=utcnow(), heartbeat_at=utcnow()))
    with SweepLock(store, "s") as lock:
        assert lock.taken_over[1] == f"its process {child.pid} on this host is gone"


def test_a_live_process_whose_pid_was_reused_is_not_the_holder(store):
    me = psutil.Process()
    store.insert_lock(dict(sweep_id="s", token="old", host=socket.gethostname(), pid=me.pid,
                           pid_started=me.create_time() - 3600, started_at=utcnow(), heartbeat_at=utcnow()))
    with SweepLock(store, "s") as lock:
        assert lock.taken_over is not None


def test_the_heartbeat_refreshes_the_lock_and_notices_a_takeover(store, monkeypatch):
    monkeypatch.setattr(lock_module, "HEARTBEAT_S", 0.05)
    beats = threading.Event()
    lock = SweepLock(store, "s", on_beat=beats.set).acquire()
    try:
        first = store.lock_holder("s")["heartbeat_at"]
        assert beats.wait(5)
        assert store.lock_holder("s")["heartbeat_at"] > first
        # another coordinator took the lock (this one was thought dead)
        store.replace_lock("s", lock.token, dict(token="newer", host="h2", pid=7))
        assert lock.lost.wait(5)
    finally:
        lock.release()
    assert store.lock_holder("s")["token"] == "newer"  # a lost lock is not released


def test_two_coordinators_racing_for_a_free_lock_cannot_both_win(tmp_path):
    db = tmp_path / "sweep.db"
    ResultStore(db).close()
    barrier = threading.Barrier(8)
    won, refused = [], []

    def contend() -> None:
        with ResultStore(db) as store:
            barrier.wait()
            try:
                won.append(SweepLock(store, "s").acquire())
            except SweepLocked:
                refused.append(1)

    threads = [threading.Thread(target=contend) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(refused) == 7
    won[0].release()


WRITER = """
import sys
from sweep_service.coordinator.config import parse_config
from sweep_service.coordinator.grid import expand
from sweep_service.coordinator.lock import SweepLock
from sweep_service.coordinator.store import ResultStore

db, name = sys.argv[1], sys.argv[2]
config = parse_config(dict(name=name, models=["resnet18", "mobilenet_v2"], pruners=["l1norm", "fpgm"],
                           rates=[round(0.05 * i, 2) for i in range(1, 16)], dataset="synthetic"))
specs = list(expand(config))
with ResultStore(db) as store, SweepLock(store, config.sweep_id()):
    store.begin_sweep(sweep_id=config.sweep_id(), name=name, config_json=config.to_json(), dataset="synthetic",
                      weights="imagenet", versions={})
    store.add_trials(config.sweep_id(), specs)
    for spec in specs:
        store.mark_running(config.sweep_id(), spec.key)
        store.record(config.sweep_id(), spec.key, {"status": "completed", "accuracy": 0.5})
        store.link_baselines(config.sweep_id())
    store.end_sweep(config.sweep_id(), "finished")
print(config.sweep_id())
"""


def test_two_sweeps_in_one_database_are_written_side_by_side(tmp_path):
    """Two coordinators of different sweeps (two processes) write one file at once."""
    from tests.conftest import REPO

    db = tmp_path / "shared.db"
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(db), name], cwd=REPO, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE) for name in ("left", "right")]
    outputs = [w.communicate(timeout=300) for w in writers]
    assert [w.returncode for w in writers] == [0, 0], [err for _, err in outputs]
    with ResultStore.open_read_only(db) as store:
        for out, _ in outputs:
            sweep_id = out.strip()
            assert store.sweep(sweep_id)["status"] == "finished"
            assert store.counts(sweep_id)["completed"] == 2 + 2 * 2 * 15
            assert store.lock_holder(sweep_id) is None


def test_status_says_who_runs_a_sweep_and_when_its_coordinator_is_gone(tmp_path, capsys):
    from seed_db import seed_sweep

    from sweep_service.cli import main

    db = tmp_path / "sweep.db"
    sweep_id = seed_sweep(db, models=["resnet18"], pruners=["l1norm"], rates=[0.5], done=1, running=1,
                          status="running")
    assert main(["status", "--db", str(db)]) == 0
    assert f"sweep {sweep_id} (running: pid 1 on seed-host, heartbeat 0 s ago)" in capsys.readouterr().out
    with sqlite3.connect(db) as con:  # killed: the sweep stays `running`, its heartbeat goes stale
        con.execute("UPDATE sweep_locks SET heartbeat_at = '2026-01-02 03:04:05.000000'")
    assert main(["status", "--db", str(db)]) == 0
    assert (f"sweep {sweep_id} (not running: its coordinator stopped without ending it (last heartbeat "
            "2026-01-02 03:04:05 UTC); run it again to resume)") in capsys.readouterr().out


def test_a_silent_holder_on_another_host_is_waited_for_then_taken_over_or_refused(store, monkeypatch, capsys):
    """A head restarted in a new container right after a crash (another host name) resumes by
    itself once the old lock goes stale; a holder that beats again meanwhile keeps the sweep."""
    monkeypatch.setattr(lock_module, "HEARTBEAT_S", 0.2)
    monkeypatch.setattr(lock_module, "SILENT_AFTER_S", 1.0)
    monkeypatch.setattr(lock_module, "STALE_AFTER_S", 3.0)
    silent = utcnow() - timedelta(seconds=1.5)
    store.insert_lock(dict(sweep_id="s", token="old", host="old-container", pid=7, pid_started=0.0,
                           started_at=silent, heartbeat_at=silent))
    started = time.monotonic()
    with SweepLock(store, "s") as lock:
        assert 1.0 < time.monotonic() - started < 10
        assert lock.taken_over[0].host == "old-container"
    assert "locked by pid 7 on host old-container, which has sent no heartbeat for" in capsys.readouterr().out

    store.insert_lock(dict(sweep_id="s", token="alive", host="busy-host", pid=8, pid_started=0.0,
                           started_at=silent, heartbeat_at=utcnow() - timedelta(seconds=1.5)))
    threading.Timer(0.5, store.refresh_lock, ("s", "alive", utcnow())).start()  # it answers
    with pytest.raises(SweepLocked, match="pid 8 on host busy-host"):
        SweepLock(store, "s").acquire()
