"""The C heap of a process that trains models: which allocator serves it, freed memory kept
for the next training step, and handed back to the OS between trials.

Trial processes run on tcmalloc (gperftools) where the machine has it: `allocator_env` is
the environment that preloads it, given to the Ray worker processes that run trials (through
the sweep's runtime environment) and to the benchmark's ideal; Ray's own daemons and the
coordinator keep the system allocator. glibc's malloc slowed the arithmetic
itself as a worker aged: serving a training step's allocations from a heap that earlier
trials' pruning, speedup and data had fragmented, it searched its free lists for longer.
Two Ray actors timing the same training steps side by side, one after running real trials
and one after only the steps: the aged one took 3-8 % more CPU, and a profile put the
difference in glibc's `_int_malloc` (4.8 % of the samples against 1.5 %). With tcmalloc the
aged worker was 6.5 % faster than with glibc, and a fresh one 4.3 % (resnet18 and
mobilenet_v2 pruned, one thread; jemalloc sped resnet18 up as well but slowed
mobilenet_v2 down by 15 %).

tcmalloc keeps freed memory for reuse once told never to release it on its own
(TCMALLOC_RELEASE_RATE=0); `release` hands it back between trials. Without tcmalloc, glibc is
set up to do the same (`keep_freed_memory`). By default glibc serves large blocks (above a
threshold that starts at 128 KB) with fresh memory mappings and unmaps them when they are
freed, and it trims the free top of the heap, so every training step faulted in fresh
pages: 5 000-8 000 page faults per step here, at 0.5-5 µs each on this virtual machine
(mobilenet_v2 pruned 50 %, one epoch: 16.7-17.2 s of training instead of 15.3-15.6 s).

Between trials everything free goes back: each trial allocates differently shaped tensors,
and a warm worker's RSS grew by about 10 % per trial (1.1 GB to 2.2 GB over ten trials)
until the heap was trimmed after each one.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os

_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
_M_MMAP_MAX = -4

TCMALLOC = "tcmalloc_minimal"  # Debian/Ubuntu: libtcmalloc-minimal4; Fedora: gperftools-libs
TCMALLOC_SETTINGS = {
    # Keep freed pages for the next step; `release` returns them between trials.
    "TCMALLOC_RELEASE_RATE": "0",
    # Its default (1 GiB) prints a warning for each CIFAR-10 tensor set loaded.
    "TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(2**40),
}


def _load_libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None
    except OSError:  # not glibc (macOS, musl)
        return None


def _load_tcmalloc():
    """The preloaded tcmalloc, if this process runs on it."""
    try:
        process = ctypes.CDLL(None)
    except OSError:
        return None
    return process if hasattr(process, "MallocExtension_ReleaseFreeMemory") else None


_LIBC = _load_libc()
_TCMALLOC = _load_tcmalloc()


def allocator() -> str:
    """The allocator serving this process: tcmalloc, glibc or system (neither: its defaults)."""
    return "tcmalloc" if _TCMALLOC is not None else "glibc" if _LIBC is not None else "system"


def allocator_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Environment variables that make the processes started with them run on tcmalloc: none
    if this machine does not have it, or if LD_PRELOAD is already set (the user's choice)."""
    environ = os.environ if environ is None else environ
    if _LIBC is None:  # preloading is how glibc's loader swaps the allocator
        return {}
    library = ctypes.util.find_library(TCMALLOC)
    if library is None or environ.get("LD_PRELOAD"):
        return {}
    return {"LD_PRELOAD": library, **TCMALLOC_SETTINGS}


def keep_freed_memory() -> None:
    """Serve every block from the heap and never trim it on free (until `release`). tcmalloc
    does so when started with TCMALLOC_SETTINGS."""
    if _TCMALLOC is None and _LIBC is not None:
        _LIBC.mallopt(_M_MMAP_MAX, 0)
        _LIBC.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(2**31 - 1))


def release() -> None:
    """Collect garbage and hand the heap's free pages back to the OS."""
    gc.collect()
    if _TCMALLOC is not None:
        _TCMALLOC.MallocExtension_ReleaseFreeMemory()
    elif _LIBC is not None:
        _LIBC.malloc_trim(0)
