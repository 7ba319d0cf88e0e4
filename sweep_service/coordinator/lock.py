"""One coordinator per sweep: a lock row in the results database, kept fresh by a heartbeat.

A coordinator takes its sweep's lock before it records anything. A second coordinator of
the same sweep (the same config started twice, on this host or another that shares the
database) is refused with a message naming the holder; sweeps with other ids in the same
database are not affected. A holder that died without releasing the lock (SIGKILL, a
crashed host) is recognised by its heartbeat, older than STALE_AFTER_S, or on the same
host by its process being gone, and its lock is taken over. A holder on another host that
has missed a few heartbeats is waited for, until it beats again (then the newcomer is
refused) or goes stale (then it is taken over): a coordinator restarted in a new container
right after a crash resumes by itself within STALE_AFTER_S. The row is taken or taken over
by a compare-and-swap on the holder's token, so two coordinators racing for a free or
stale lock cannot both win.

A holder that finds its lock taken by another (its heartbeat could not be written for
longer than STALE_AFTER_S, e.g. the machine was suspended) sets `lost` and stops
recording: the sweep has a new writer.
"""
from __future__ import annotations

import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Callable

import psutil

from sweep_service.coordinator.store import ResultStore, utcnow

HEARTBEAT_S = 10.0  # how often the holder refreshes its lock (and the report's status.json)
STALE_AFTER_S = 60.0  # a lock without a heartbeat for this long is a dead coordinator's
SILENT_AFTER_S = 25.0  # a holder without a heartbeat for this long is waited for, not refused


class SweepLocked(RuntimeError):
    """Another live coordinator runs this sweep."""


@dataclass(frozen=True)
class Holder:
    """A lock row: who runs a sweep."""

    sweep_id: str
    token: str
    host: str
    pid: int
    pid_started: float
    started_at: datetime
    heartbeat_at: datetime

    def describe(self, now: datetime) -> str:
        age = (now - self.heartbeat_at).total_seconds()
        return (f"pid {self.pid} on host {self.host}, running it since {self.started_at:%Y-%m-%d %H:%M:%S} UTC "
                f"(last heartbeat {max(age, 0):.0f} s ago)")


def stale_reason(holder: Holder, now: datetime, *, host: str,
                 process_alive: Callable[[int, float], bool]) -> str | None:
    """Why `holder`'s lock is a dead coordinator's, or None if it may still be running."""
    age = (now - holder.heartbeat_at).total_seconds()
    if age > STALE_AFTER_S:
        return f"no heartbeat for {age:.0f} s"
    if holder.host == host and not process_alive(holder.pid, holder.pid_started):
        return f"its process {holder.pid} on this host is gone"
    return None


def process_alive(pid: int, started: float) -> bool:
    """Whether process `pid`, started at `started` (seconds since the epoch), still runs on
    this host (a pid reused by a later process does not count)."""
    try:
        return abs(psutil.Process(pid).create_time() - started) < 1.0
    except psutil.Error:
        return False


def is_live(row: dict | None, now: datetime | None = None) -> bool:
    """Whether a lock row (ResultStore.lock_holder) belongs to a coordinator that is alive,
    judged by its heartbeat (all a reader on another host can judge by)."""
    if row is None:
        return False
    return ((now or utcnow()) - row["heartbeat_at"]).total_seconds() <= STALE_AFTER_S


class SweepLock:
    """The lock of one sweep, held by this process while it runs the sweep.

    `acquire()` takes it (or raises SweepLocked) and starts a daemon thread that refreshes
    the heartbeat every HEARTBEAT_S and then calls `on_beat` (the coordinator writes its
    status file there). `release()` stops the thread and deletes the row.
    """

    def __init__(self, store: ResultStore, sweep_id: str, *, on_beat: Callable[[], None] | None = None):
        self.store = store
        self.sweep_id = sweep_id
        self.on_beat = on_beat
        self.token = uuid.uuid4().hex
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.lost = threading.Event()
        self.taken_over: tuple[Holder, str] | None = None  # the dead holder this lock was taken from, and why
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned = False

    def _row(self) -> dict:
        now = utcnow()
        return dict(sweep_id=self.sweep_id, token=self.token, host=self.host, pid=self.pid,
                    pid_started=psutil.Process(self.pid).create_time(), started_at=now, heartbeat_at=now)

    def acquire(self) -> "SweepLock":
        races, waited = 0, False
        while races < 5:  # a round is lost only to another coordinator that just won
            current = self.store.lock_holder(self.sweep_id)
            if current is None:
                if self.store.insert_lock(self._row()):
                    break
                races += 1
                continue
            holder = Holder(**current)
            reason = stale_reason(holder, utcnow(), host=self.host, process_alive=process_alive)
            silent_for = (utcnow() - holder.heartbeat_at).total_seconds()
            if reason is None and silent_for > SILENT_AFTER_S:
                if not waited:
                    print(f"sweep {self.sweep_id} is locked by pid {holder.pid} on host {holder.host}, which has "
                          f"sent no heartbeat for {silent_for:.0f} s: waiting up to "
                          f"{STALE_AFTER_S - silent_for:.0f} s for it before taking the sweep over", flush=True)
                    waited = True
                time.sleep(min(HEARTBEAT_S / 2, max(STALE_AFTER_S - silent_for, 0) + 0.1))
                continue
            if reason is None:
                raise SweepLocked(
                    f"sweep {self.sweep_id} is being run by another coordinator: {holder.describe(utcnow())}. "
                    f"Watch it with `python -m sweep_service status --db {self.store.path}`, or stop that "
                    f"coordinator first (a coordinator that died is taken over after {STALE_AFTER_S:.0f} s "
                    "without a heartbeat).")
            if self.store.replace_lock(self.sweep_id, holder.token, self._row()):
                self.taken_over = holder, reason
                break
            races += 1
        else:
            raise SweepLocked(f"could not take the lock of sweep {self.sweep_id}: other coordinators keep "
                              "taking it; stop them first")
        self._thread = threading.Thread(target=self._beat_until_released, name="sweep-heartbeat", daemon=True)
        self._thread.start()
        return self

    def beat(self) -> None:
        """Refresh the heartbeat once; sets `lost` if another coordinator took the lock."""
        try:
            if not self.store.refresh_lock(self.sweep_id, self.token, utcnow()):
                self.lost.set()
                return
        except Exception as exc:  # a busy or full disk: the next beat tries again
            if not self._warned:
                print(f"warning: could not refresh the lock of sweep {self.sweep_id} in {self.store.path}: "
                      f"{type(exc).__name__}: {exc}", file=sys.stderr)
                self._warned = True
        if self.on_beat is not None:
            self.on_beat()

    def _beat_until_released(self) -> None:
        while not self._stop.wait(HEARTBEAT_S) and not self.lost.is_set():
            self.beat()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=HEARTBEAT_S)
        if not self.lost.is_set():
            try:
                self.store.delete_lock(self.sweep_id, self.token)
            except Exception as exc:  # left behind, it goes stale and is taken over
                print(f"warning: could not release the lock of sweep {self.sweep_id}: {type(exc).__name__}: {exc}",
                      file=sys.stderr)

    def __enter__(self) -> "SweepLock":
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()

