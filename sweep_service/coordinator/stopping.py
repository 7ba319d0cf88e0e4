"""Stopping a coordinator: SIGTERM (what `docker stop`, `docker compose down` and Kubernetes
send) is handled like SIGINT (Ctrl-C), as a `Stopped` exception in the main thread, so
that one path leaves the sweep `interrupted` and its unfinished trials `pending`.

Where being interrupted would leave things half done (Ray starting its processes), the
signal is held back until the step is over (`deferred`).
"""
from __future__ import annotations

import contextlib
import signal
from typing import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(KeyboardInterrupt):
    """The user (or the container runtime) asked the coordinator to stop."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_handled = False  # inside `handled()`
_deferring = 0
_pending: int | None = None
_received: int | None = None  # the last stop signal


def _on_signal(signum, _frame) -> None:
    global _pending, _received
    _received = signum
    if _deferring:
        _pending = signum
        return
    raise Stopped(signum)


def stop_behind(exc: BaseException) -> Stopped | None:
    """The stop that `exc` stands for, or None if it is not one. Libraries turn the Stopped
    raised inside their calls into their own KeyboardInterrupt (ray.wait does), and
    ray.init's SIGTERM handler exits with SystemExit(SIGTERM)."""
    if isinstance(exc, Stopped):
        return exc
    if isinstance(exc, KeyboardInterrupt):
        return Stopped(_received or signal.SIGINT)
    if isinstance(exc, SystemExit) and exc.code == signal.SIGTERM:
        return Stopped(signal.SIGTERM)
    return None


def reinstall() -> None:
    """Handle SIGINT and SIGTERM again after a library replaced the handlers (ray.init sets
    its own SIGTERM handler, which exits without cleaning up); only inside `handled()`."""
    if _handled:
        for signum in SIGNALS:
            signal.signal(signum, _on_signal)


def ignore() -> None:
    """Ignore further stop signals while the coordinator is already stopping (only inside
    `handled()`: a program calling the coordinator keeps its own handlers)."""
    if _handled:
        for signum in SIGNALS:
            signal.signal(signum, signal.SIG_IGN)


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """Stop signals raise Stopped inside the block; the previous handlers come back after."""
    global _handled
    previous = {signum: signal.getsignal(signum) for signum in SIGNALS}
    _handled = True
    reinstall()
    try:
        yield
    finally:
        _handled = False
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A stop signal arriving inside the block raises Stopped when the block ends."""
    global _deferring, _pending
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
    if not _deferring and _pending is not None:
        signum, _pending = _pending, None
        raise Stopped(signum)
