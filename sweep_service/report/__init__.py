"""Charts and the HTML report, made from the results database alone.

`write_report(db_path, out_dir, sweep_id=None)` writes the static report;
`recommend.recommend` picks the most accurate trial within a device's limits; `export` writes
the trials as CSV or JSON. Their commands are in `sweep_service.report.cli`.

The names are imported on first use, so that the command line (which imports
`sweep_service.report.cli` for every command) does not load matplotlib for nothing.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "write_report": "sweep_service.report.page",
    "Limits": "sweep_service.report.recommend",
    "Recommendation": "sweep_service.report.recommend",
    "SweepResults": "sweep_service.report.results",
    "load_results": "sweep_service.report.results",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
