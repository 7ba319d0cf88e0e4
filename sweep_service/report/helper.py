"""A second process for drawing a sweep's final report.

`python -m sweep_service run` starts it first thing, so that its imports (matplotlib and
the report's modules, about 1 s of CPU) run on a core that the command's own imports leave
idle. When the last trial is done, the final report's charts are drawn half here and half
in the coordinator, on cores no trial needs any more. This module imports nothing heavy:
the coordinator must not pay for matplotlib to start the helper.

The helper skips Python's teardown when it is shut down (it holds nothing to clean up;
the teardown took 0.2 s, which the command waited for), and on Linux it is killed when
the coordinator's process ends, however it ends: a killed coordinator does not leave it
behind.
"""
from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import multiprocessing
import os
import signal
import sys
from concurrent.futures import Executor, ProcessPoolExecutor

_PR_SET_PDEATHSIG = 1  # from linux/prctl.h


def start_chart_helper() -> Executor | None:
    """The helper process, already importing the chart code; None if it cannot start."""
    try:
        helper = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                     initializer=_set_up_helper, initargs=(os.getpid(),))
        helper.submit(_import_charts)
    except (OSError, RuntimeError, ValueError):  # no processes here (sandboxes, some platforms)
        return None
    return helper


def _import_charts() -> None:
    from sweep_service.startup import imports_outside_gc

    with imports_outside_gc():
        import sweep_service.report.charts  # noqa: F401


def _set_up_helper(parent: int) -> None:
    """In the helper: exit without teardown, and have Linux kill it when the thread that
    started it (the coordinator's main thread) ends."""
    atexit.register(os._exit, 0)
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it ended before the line above
        os._exit(0)
