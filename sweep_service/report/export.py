"""A sweep's trials as CSV or JSON, for spreadsheets, notebooks and other tools.

CSV: one row per trial, every column of the `trials` table (the spec as JSON text in
`spec_json`), fractions as fractions, times in ISO 8601 UTC; or with `summary`, one row
per configuration (model, pruner, rate): how many seeds, and each figure's mean with the
bounds of its 95 % interval (empty with one seed: no spread measured), over the trials that
fine-tuned in full (an adaptive sweep's short-budget results are trial rows only, with their
`budget`, `rung` and `stop_reason`). A text cell that a
spreadsheet would run as a formula (it starts with =, +, -, @, a tab or a carriage return:
an error text can hold `=HYPERLINK(...)`) is written with a leading apostrophe, which
spreadsheets show as text; numbers are written as they are. JSON: an object with the sweep
(its config, library versions and provenance parsed), the list of trials (`spec` parsed)
and the `summary` rows.
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
# The figures a summary row gives as mean and interval bounds.
SUMMARY_METRICS = ("accuracy", "accuracy_pruned", "accuracy_drop", "channel_sparsity", "params_after",
                   "param_reduction", "macs_after", "mac_reduction", "model_size_bytes", "latency_ms")
SUMMARY_COLUMNS = ("model", "pruner", "rate", "kind", "n", "seeds") + tuple(
    f"{metric}_{part}" for metric in SUMMARY_METRICS for part in ("mean", "ci95_low", "ci95_high"))


def trial_records(results: SweepResults, status: str | None = None) -> list[dict[str, Any]]:
    return [{c: jsonable(t.get(c)) for c in TRIAL_COLUMNS}
            for t in results.trials if status is None or t["status"] == status]


def summary_records(results: SweepResults) -> list[dict[str, Any]]:
    """A record per completed configuration, in grid order (SUMMARY_COLUMNS; `seeds` a list)."""
    records = []
    for config in results.configurations.values():
        record: dict[str, Any] = dict(model=config.model, pruner=config.pruner, rate=config.rate, kind=config.kind,
                                      n=len(config.trials), seeds=config.seeds)
        for metric in SUMMARY_METRICS:
            value = config.estimate(metric)
            record.update({f"{metric}_mean": None if value is None else value.mean,
                           f"{metric}_ci95_low": None if value is None else value.low,
                           f"{metric}_ci95_high": None if value is None else value.high})
        records.append({k: jsonable(v) for k, v in record.items()})
    return records


def spreadsheet_safe(value: Any) -> Any:
    """`value`, or for text a spreadsheet would run as a formula, that text made inert."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def write_csv(results: SweepResults, out: TextIO, status: str | None = None, summary: bool = False) -> int:
    """Write the trials (or with `summary`, the configurations) as CSV; returns how many rows."""
    if summary:
        rows = [{**r, "seeds": " ".join(map(str, r["seeds"]))} for r in summary_records(results)]
        columns = SUMMARY_COLUMNS
    else:
        rows, columns = trial_records(results, status), TRIAL_COLUMNS
    rows = [{k: spreadsheet_safe(v) for k, v in row.items()} for row in rows]
    # CRLF, as RFC 4180 has it: the writer then quotes every text holding a carriage return
    # (with "\n" alone it would leave one unquoted, and readers would split the row there).
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    return len(rows)


def write_json(results: SweepResults, out: TextIO, status: str | None = None) -> int:
    """Write the sweep, its trials and its configurations' summary as one JSON object;
    returns how many trials."""
    sweep = {k: jsonable(v) for k, v in results.sweep.items()
             if k not in ("config_json", "versions_json", "provenance_json")}
    sweep.update(config=results.config, versions=results.versions, provenance=results.provenance,
                 counts=results.counts)
    trials = []
    for record in trial_records(results, status):
        spec = record.pop("spec_json")
        record["spec"] = json.loads(spec) if spec else None
        trials.append(record)
    json.dump({"sweep": sweep, "trials": trials, "summary": summary_records(results)}, out, indent=1,
              allow_nan=False)
    out.write("\n")
    return len(trials)


def export_text(results: SweepResults, fmt: str, status: str | None = None, summary: bool = False) -> str:
    """The export as text; `summary` makes the CSV a row per configuration (JSON has both)."""
    buffer = io.StringIO()
    if fmt == "csv":
        write_csv(results, buffer, status, summary)
    else:
        write_json(results, buffer, status)
    return buffer.getvalue()
