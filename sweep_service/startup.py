"""Process start-up: imports with Python's garbage collector off, then frozen out of its view.

torch, torchvision and NNI leave over a million objects that live as long as the process.
While the imports create them, the collector's passes walk them again and again: a
worker's imports took 2.9 s with it on and 2.4 s with it off here. Afterwards each full
collection walked them all too (0.2 s after every trial) and so did the process's exit.
Frozen, they are skipped from then on.
"""
from __future__ import annotations

import contextlib
import gc
import threading
from typing import Iterator

_lock = threading.Lock()
_open = 0  # blocks inside imports_outside_gc, in any thread
_was_enabled = False  # the collector's state when the first of them began


@contextlib.contextmanager
def imports_outside_gc() -> Iterator[None]:
    """Run the block (the process's imports) with the collector off, then freeze every
    object that exists, so that no later collection walks them. Nests, and overlaps across
    threads (the command imports torch in one while it starts Ray in another): the
    collector stays off until the last open block ends."""
    global _open, _was_enabled
    with _lock:
        if _open == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _open += 1
    try:
        yield
    finally:
        with _lock:
            _open -= 1
            gc.freeze()
            if _open == 0 and _was_enabled:
                gc.enable()
