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
from typing import Iterator


@contextlib.contextmanager
def imports_outside_gc() -> Iterator[None]:
    """Run the block (the process's imports) with the collector off, then freeze every
    object that exists, so that no later collection walks them. Nests."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()
