"""A sweep's trials as CSV or JSON, for spreadsheets, notebooks and other tools.

CSV: one row per trial, every column of the `trials` table (the spec as JSON text in
`spec_json`), fractions as fractions, times in ISO 8601 UTC. A text cell that a spreadsheet
would run as a formula (it starts with =, +, -, @, a tab or a carriage return: an error text
can hold `=HYPERLINK(...)`) is written with a leading apostrophe, which spreadsheets show
as text; numbers are written as they are. JSON: an object with the
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
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
TRIAL_COLUMNS = tuple(c.name for c in TrialRow.__table__.columns if c.name != "id")


def trial_records(results: SweepResults, status: str | None = None) -> list[dict[str, Any]]:
    return [{c: jsonable(t.get(c)) for c in TRIAL_COLUMNS}
            for t in results.trials if status is None or t["status"] == status]


def spreadsheet_safe(value: Any) -> Any:
    """`value`, or for text a spreadsheet would run as a formula, that text made inert."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def write_csv(results: SweepResults, out: TextIO, status: str | None = None) -> int:
    """Write the trials as CSV; returns how many rows."""
    rows = [{k: spreadsheet_safe(v) for k, v in row.items()} for row in trial_records(results, status)]
    # CRLF, as RFC 4180 has it: the writer then quotes every text holding a carriage return
    # (with "\n" alone it would leave one unquoted, and readers would split the row there).
    writer = csv.DictWriter(out, fieldnames=TRIAL_COLUMNS, lineterminator="\r\n")
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
