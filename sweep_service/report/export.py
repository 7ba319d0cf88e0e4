"""A sweep's trials as CSV or JSON, for spreadsheets, notebooks and other tools.

CSV: one row per trial, every column of the `trials` table (the spec as JSON text in
`spec_json`), fractions as fractions, times in ISO 8601 UTC. JSON: an object with the
sweep (its config and library versions parsed) and the list of trials (`spec` parsed).
"""
from __future__ import annotations

import csv
import io
import json
from typing import Any, TextIO

from sweep_service.coordinator.store import TrialRow
from sweep_service.report.fmt import jsonable
from sweep_service.report.results import SweepResults

FORMATS = ("csv", "json")
TRIAL_COLUMNS = tuple(c.name for c in TrialRow.__table__.columns if c.name != "id")


def trial_records(results: SweepResults, status: str | None = None) -> list[dict[str, Any]]:
    return [{c: jsonable(t.get(c)) for c in TRIAL_COLUMNS}
            for t in results.trials if status is None or t["status"] == status]


def write_csv(results: SweepResults, out: TextIO, status: str | None = None) -> int:
    """Write the trials as CSV; returns how many rows."""
    rows = trial_records(results, status)
    writer = csv.DictWriter(out, fieldnames=TRIAL_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return len(rows)


def write_json(results: SweepResults, out: TextIO, status: str | None = None) -> int:
    """Write the sweep and its trials as one JSON object; returns how many trials."""
    sweep = {k: jsonable(v) for k, v in results.sweep.items() if k not in ("config_json", "versions_json")}
    sweep.update(config=results.config, versions=results.versions, counts=results.counts)
    trials = []
    for record in trial_records(results, status):
        spec = record.pop("spec_json")
        record["spec"] = json.loads(spec) if spec else None
        trials.append(record)
    json.dump({"sweep": sweep, "trials": trials}, out, indent=1, allow_nan=False)
    out.write("\n")
    return len(trials)


def export_text(results: SweepResults, fmt: str, status: str | None = None) -> str:
    buffer = io.StringIO()
    {"csv": write_csv, "json": write_json}[fmt](results, buffer, status)
    return buffer.getvalue()
