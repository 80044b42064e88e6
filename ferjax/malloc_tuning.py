"""glibc malloc settings that let XLA:CPU reuse its per-step buffers, applied on import.

XLA:CPU mallocs every step's temporary buffer (613 MB for ResNet-18 at 224 px, batch 16)
and the im2col scratch of some convolutions (118 MB for the 7x7 stem), from its worker
threads. glibc serves blocks that large with a fresh mmap and unmaps them on free, so each
step the kernel maps and zeroes them again: 150,000 page faults per baseline step, and
14-21 % of the process's CPU time in `clear_page_erms` and the fault path (`perf record`
on a 2-core AMD EPYC, jaxlib 0.10.2; benchmarks/RESULTS.md). Three settings keep freed
memory in the heap for the next step:

- one arena for every thread: a thread's own arena holds at most 64 MB, so larger blocks
  would still be mmapped there;
- no mmap for large blocks: they come from the main heap instead;
- no trimming of the heap's free top at all. mallopt takes a C int, and glibc stores the
  threshold as a size_t: -1 means "never". The largest positive int (2 GiB) is not enough:
  `mek` at 224 px with steps queued peaks at 4.2 GB, freed its top past 2 GiB and faulted
  170,000-240,000 pages a step back in.

Measured (224 px, batch 16, three alternating runs, median of the last 8 of 16 steps):
baseline 689-704 -> 612-643 ms, mek 1,388-1,392 -> 1,299-1,306 ms (two runs), no page
faults in the steady state. The price: the process keeps its peak heap instead of
returning freed memory to the system.

Set FERJAX_MALLOC_TUNING=0 to turn this off. Only glibc (Linux) has these settings. Like
the XLA flags, they act fully only when ferjax is imported before JAX starts its threads.
Child processes (grain's data workers) are left alone: they decode images, not run XLA.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import platform
import sys

# mallopt parameters (glibc's malloc.h) and the values ferjax sets.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
SETTINGS: tuple[tuple[str, int, int], ...] = (
    ("M_ARENA_MAX", M_ARENA_MAX, 1),
    ("M_MMAP_MAX", M_MMAP_MAX, 0),
    ("M_TRIM_THRESHOLD", M_TRIM_THRESHOLD, -1),   # (size_t)-1: never trim
)


def apply(environ=os.environ, libc=None) -> list[str]:
    """Sets SETTINGS with mallopt; returns the names it set (empty when off or not glibc).

    `libc` is the C library to call (the process's own by default).
    """
    if environ.get("FERJAX_MALLOC_TUNING", "1") == "0":
        return []
    if multiprocessing.parent_process() is not None:
        return []
    if libc is None:
        if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
            return []
        libc = ctypes.CDLL(None)
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return []
    return [name for name, param, value in SETTINGS if mallopt(param, value) == 1]
