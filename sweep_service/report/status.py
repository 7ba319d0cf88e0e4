"""`report/status.json`: whether a sweep's coordinator is alive, for the report page (which
stops reloading itself when the file goes stale) and the report server.

The coordinator writes it (`StatusFile`) with every heartbeat of its lock
(sweep_service.coordinator.lock) and once when it ends. Its fields (docs/reliability.md):

    sweep_id       the sweep the coordinator runs
    status         running | finished | incomplete | interrupted | failed
    updated_at     the last write, ISO 8601 UTC ("2026-12-06T10:00:00Z")
    updated_unix   the same, seconds since the epoch
    stale_after_s  "running" with no write for this long: the coordinator is gone
    report_unix    when index.html was last written (seconds since the epoch), or null
    host, pid      where the coordinator runs
    message        why it ended, for interrupted and failed sweeps ("" otherwise)

The Docker head's entrypoint records a coordinator that exited with an error without
having written a final state (a config error before the sweep began, a crash, a kill):

    python -m sweep_service.report.status record-exit REPORT_DIR --since T --exit-code N \\
        (--message TEXT | --stderr FILE) [--stopped]
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweep_service.files import write_atomic

STATUS_FILE = "status.json"
RUNNING, FINISHED, INCOMPLETE, INTERRUPTED, FAILED = "running", "finished", "incomplete", "interrupted", "failed"
STATES = (RUNNING, FINISHED, INCOMPLETE, INTERRUPTED, FAILED)
MAX_MESSAGE_CHARS = 4000


@dataclass(frozen=True)
class SweepStatus:
    state: str
    updated: float  # unix time of the last write
    message: str = ""
    stale_after_s: float | None = None

    def stale(self, now: float) -> bool:
        """A `running` status whose coordinator stopped writing it: it is gone."""
        return (self.state == RUNNING and self.stale_after_s is not None
                and now - self.updated > self.stale_after_s)


class StatusFile:
    """The coordinator's status file in `report_dir`. Writing it never stops a sweep: a
    failure (a full or read-only disk) is reported once and the next write tries again."""

    def __init__(self, report_dir: Path, sweep_id: str, stale_after_s: float):
        self.path = Path(report_dir) / STATUS_FILE
        self.fields: dict[str, Any] = dict(sweep_id=sweep_id, status=RUNNING, report_unix=None,
                                           stale_after_s=stale_after_s, host=socket.gethostname(),
                                           pid=os.getpid(), message="")
        self._lock = threading.Lock()
        self._warned = False

    def write(self, **changes: Any) -> None:
        """Apply `changes` to the fields and write the file with the current time."""
        with self._lock:
            self.fields.update(changes)
            _stamp(self.fields)
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                _write(self.path, self.fields)
            except OSError as exc:
                if not self._warned:
                    print(f"warning: could not write {self.path}: {exc}", file=sys.stderr)
                    self._warned = True


def _stamp(fields: dict[str, Any]) -> None:
    now = time.time()
    fields.update(updated_unix=now, updated_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)))


def _write(path: Path, fields: dict[str, Any]) -> None:
    write_atomic(path, (json.dumps(fields, indent=1, sort_keys=True) + "\n").encode())


def _read_fields(report_dir: Path) -> dict[str, Any]:
    try:
        fields = json.loads((Path(report_dir) / STATUS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return fields if isinstance(fields, dict) else {}


def read_status(report_dir: Path) -> SweepStatus | None:
    """The status in `report_dir`, or None if there is none or it cannot be read."""
    fields = _read_fields(report_dir)
    try:
        state, updated = fields["status"], float(fields["updated_unix"])
        message = str(fields.get("message") or "")
        stale_after_s = float(fields["stale_after_s"]) if fields.get("stale_after_s") is not None else None
    except (KeyError, TypeError, ValueError):
        return None
    return SweepStatus(state, updated, message, stale_after_s) if state in STATES else None


def message_from_stderr(text: str, exit_code: int) -> str:
    """What a user needs from a coordinator's stderr: from its last `error:` line on (the
    message of a handled error), else its last lines (a traceback's end)."""
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    starts = [i for i, line in enumerate(lines) if line.startswith("error:")]
    kept = lines[starts[-1]:] if starts else lines[-20:]
    message = "\n".join(kept).removeprefix("error:").strip()
    if not message:
        return f"the coordinator exited with status {exit_code} and printed no error"
    return message if len(message) <= MAX_MESSAGE_CHARS else "..." + message[-MAX_MESSAGE_CHARS:]


def record_exit(report_dir: Path, *, since: float, message: str, stopped: bool) -> str | None:
    """After a coordinator that started at `since` exited with an error: record it as failed
    (or interrupted, if a signal `stopped` it), unless it recorded how it ended itself.
    Returns the state recorded, or None."""
    fields = _read_fields(report_dir)
    status = read_status(report_dir)
    if status is not None and status.state != RUNNING and status.updated >= since:
        return None
    state = INTERRUPTED if stopped else FAILED
    fields.update(status=state, message=message)
    _stamp(fields)
    Path(report_dir).mkdir(parents=True, exist_ok=True)
    _write(Path(report_dir) / STATUS_FILE, fields)
    return state


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sweep_service.report.status",
                                     description="Record how a coordinator ended, for the report server.")
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record-exit", help="record a coordinator that exited with an error without saying how")
    rec.add_argument("report_dir", type=Path)
    rec.add_argument("--since", type=float, required=True, help="unix time the coordinator started")
    rec.add_argument("--exit-code", type=int, required=True)
    text = rec.add_mutually_exclusive_group(required=True)
    text.add_argument("--message", help="why it failed")
    text.add_argument("--stderr", type=Path, help="the coordinator's stderr, to take the message from")
    rec.add_argument("--stopped", action="store_true", help="a signal stopped it: record `interrupted`")
    args = parser.parse_args(argv)
    message = args.message
    if message is None:
        try:
            message = message_from_stderr(args.stderr.read_text(encoding="utf-8", errors="replace"), args.exit_code)
        except OSError:
            message = message_from_stderr("", args.exit_code)
    record_exit(args.report_dir, since=args.since, message=message, stopped=args.stopped)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
