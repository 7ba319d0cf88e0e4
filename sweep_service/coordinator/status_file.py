"""`status.json` beside the report: whether the sweep's coordinator is alive, for the report
page (which stops reloading itself when the file goes stale) and the report server.

The coordinator rewrites it with every heartbeat (sweep_service.coordinator.lock) and once
when it ends. Its fields (docs/reliability.md):

    sweep_id       the sweep the coordinator runs
    status         running | finished | incomplete | interrupted | failed
    updated_at     the last write, ISO 8601 UTC ("2026-12-06T10:00:00Z")
    updated_unix   the same, seconds since the epoch
    stale_after_s  "running" with no write for this long: the coordinator is gone
    report_unix    when index.html was last written (seconds since the epoch), or null
    host, pid      where the coordinator runs
    message        why it ended, for interrupted and failed sweeps ("" otherwise)
"""
from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from sweep_service.coordinator.lock import STALE_AFTER_S
from sweep_service.files import write_atomic

STATUS_FILE = "status.json"


class StatusFile:
    """The coordinator's status file in `report_dir`. Writing it never stops a sweep: a
    failure (a full or read-only disk) is reported once and the next write tries again."""

    def __init__(self, report_dir: Path, sweep_id: str):
        self.path = Path(report_dir) / STATUS_FILE
        self.fields: dict[str, Any] = dict(sweep_id=sweep_id, status="running", report_unix=None,
                                           stale_after_s=STALE_AFTER_S, host=socket.gethostname(),
                                           pid=os.getpid(), message="")
        self._lock = threading.Lock()
        self._warned = False

    def write(self, **changes: Any) -> None:
        """Apply `changes` to the fields and write the file with the current time."""
        with self._lock:
            self.fields.update(changes)
            now = time.time()
            self.fields.update(updated_unix=now,
                               updated_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)))
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(self.path, (json.dumps(self.fields, indent=1, sort_keys=True) + "\n").encode())
            except OSError as exc:
                if not self._warned:
                    print(f"warning: could not write {self.path}: {exc}", file=sys.stderr)
                    self._warned = True

