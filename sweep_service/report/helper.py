"""A second process for drawing a sweep's final report.

`python -m sweep_service run` starts it first thing, so that its imports (matplotlib and
the report's modules, about 1 s of CPU) run on a core that the command's own imports leave
idle. When the last trial is done, the final report's charts are drawn half here and half
in the coordinator, on cores no trial needs any more. This module imports nothing heavy:
the coordinator must not pay for matplotlib to start the helper.
"""
from __future__ import annotations

import multiprocessing
from concurrent.futures import Executor, ProcessPoolExecutor


def start_chart_helper() -> Executor | None:
    """The helper process, already importing the chart code; None if it cannot start."""
    try:
        helper = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        helper.submit(_import_charts)
    except (OSError, RuntimeError, ValueError):  # no processes here (sandboxes, some platforms)
        return None
    return helper


def _import_charts() -> None:
    from sweep_service.startup import imports_outside_gc

    with imports_outside_gc():
        import sweep_service.report.charts  # noqa: F401
