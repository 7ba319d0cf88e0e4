"""`report/status.json`, as the report server reads it and the Docker head records an exit.

The coordinator writes the file (a heartbeat while it runs, its final state when it ends);
these are the fields read here:

    status         running | finished | incomplete | interrupted | failed
    updated_unix   the last write, seconds since the epoch
    updated_at     the same, ISO 8601 UTC
    stale_after_s  "running" with no write for this long: the coordinator is gone
    message        why it ended, for interrupted and failed sweeps

The Docker head's entrypoint records a coordinator that exited with an error without
having written a final state (a config error before the sweep began, a crash, a kill):

    python -m sweep_service.report.status record-exit REPORT_DIR --since T --exit-code N \\
        (--message TEXT | --stderr FILE) [--stopped]
"""
from __future__ import annotations

import argparse
import json
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
    now = time.time()
    fields.update(status=state, message=message, updated_unix=now,
                  updated_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)))
    Path(report_dir).mkdir(parents=True, exist_ok=True)
    write_atomic(Path(report_dir) / STATUS_FILE, (json.dumps(fields, indent=1, sort_keys=True) + "\n").encode())
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
