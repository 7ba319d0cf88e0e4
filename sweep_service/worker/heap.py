"""The C heap of a process that trains models: which allocator serves it, freed memory kept
for the next training step, and handed back to the OS between trials.

Trial processes run on tcmalloc (gperftools) where the machine has it: `allocator_env` is
the environment that preloads it, given to the Ray worker processes that run trials
(through the sweep's runtime environment); Ray's own daemons and the coordinator keep the
system allocator. glibc's malloc slows training as a worker ages: it serves each step's
allocations from a heap that earlier trials' pruning, speedup and data fragmented, and
searches its free lists for longer (docs/performance.md has the measurements).

During a trial, freed memory stays in the heap for the next step: by default glibc maps
large blocks afresh and unmaps them on free, so every step would fault its activations in
again. tcmalloc does the same once told never to release memory on its own
(TCMALLOC_RELEASE_RATE=0); `keep_freed_memory` sets glibc up alike. Between trials
`release` hands everything free back to the OS, since the next trial allocates tensors of
other shapes and a warm worker's memory would otherwise grow with each trial.
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
