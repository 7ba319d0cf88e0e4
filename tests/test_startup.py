"""Imports with the garbage collector off, and what they made frozen out of its view."""
from __future__ import annotations

import subprocess
import sys

# In a fresh interpreter: freezing is for the whole process, and pytest's own objects
# should stay collectable.
PROBE = """
import gc
from sweep_service.startup import imports_outside_gc

def collector_sees(obj):
    return any(o is obj for o in gc.get_objects())

before = gc.get_freeze_count()
with imports_outside_gc():
    off_inside = not gc.isenabled()
    with imports_outside_gc():  # nested, as prepare_process inside the workers' preload
        made = [[] for _ in range(1000)]
    off_after_nested = not gc.isenabled()
    import email.parser  # noqa: F401  (not imported yet)
on_after = gc.isenabled()
frozen = gc.get_freeze_count() - before
# overlapping in two threads, as `run` checks the config while it starts Ray: the block
# that began first ends first
import threading
inside, leave, seen = threading.Event(), threading.Event(), {}
def other_thread():
    with imports_outside_gc():
        inside.set()
        leave.wait()
        seen["off"] = not gc.isenabled()
worker = threading.Thread(target=other_thread)
with imports_outside_gc():
    worker.start()
    inside.wait()
leave.set()
worker.join()
off_while_other_open = seen["off"]
on_after_both = gc.isenabled()
gc.disable()
with imports_outside_gc():
    pass
stays_off = not gc.isenabled()
print(off_inside, off_after_nested, on_after, frozen >= 1000, collector_sees(made), off_while_other_open,
      on_after_both, stays_off)
"""


def test_imports_run_with_the_collector_off_and_are_frozen_after():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    off_inside, off_after_nested, on_after, frozen, seen, off_while_other_open, on_after_both, stays_off = \
        out.stdout.split()
    assert off_inside == "True" and off_after_nested == "True"  # off for the whole outer block
    assert on_after == "True"  # back on once the imports are done
    # a block ending in one thread leaves it off while another thread's is still open
    assert off_while_other_open == "True" and on_after_both == "True"
    assert frozen == "True" and seen == "False"  # what they made is out of the collector's view
    assert stays_off == "True"  # a process that had it off keeps it off
