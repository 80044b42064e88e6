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
Under a preloaded tcmalloc or jemalloc nothing is set.

Better still is tcmalloc, where the machine has it: `relaunch_under_tcmalloc` (called by
`python -m ferjax.main` and the benchmarks) re-executes the command with it preloaded.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import platform
import subprocess
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
    if libc is None and preloaded_allocator():
        return []   # glibc's malloc is not in use; tcmalloc's mallopt ignores settings
    if libc is None:
        if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
            return []
        libc = ctypes.CDLL(None)
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return []
    return [name for name, param, value in SETTINGS if mallopt(param, value) == 1]


def preloaded_allocator(maps_path: str = "/proc/self/maps") -> str | None:
    """'tcmalloc' or 'jemalloc' when that allocator is mapped into this process (through
    LD_PRELOAD: it then serves every malloc), else None."""
    try:
        with open(maps_path) as maps:
            text = maps.read()
    except OSError:
        return None
    return next((name for name in ("tcmalloc", "jemalloc") if f"lib{name}" in text), None)


# tcmalloc (gperftools) serves oneDNN's page-aligned 74 KB workspaces, which XLA:CPU's Eigen
# convolutions request about 11,800 times a ResNet-18 step, from per-size free lists, where
# glibc walks a bin of just-too-small chunks each time, and it keeps the step's large
# buffers mapped between steps without glibc's single-arena compromise. rul_cbam at 224 px,
# batch 16, on a 2-core Xeon: 1,051-1,090 ms a step with the glibc settings above, 859-904
# ms under tcmalloc (benchmarks/RESULTS.md). LD_PRELOAD only acts when a process starts, so
# `relaunch_under_tcmalloc` re-executes the command with it.
TCMALLOC_SONAMES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4")
_RELAUNCHED = "FERJAX_RELAUNCHED_UNDER_TCMALLOC"


def find_tcmalloc(environ=os.environ) -> str | None:
    """The tcmalloc library to preload: FERJAX_TCMALLOC if it names a file, else the path
    of the first of TCMALLOC_SONAMES the dynamic loader's cache lists (Debian:
    libtcmalloc-minimal4), else None. FERJAX_TCMALLOC=0 turns the search off."""
    setting = environ.get("FERJAX_TCMALLOC", "")
    if setting == "0":
        return None
    if setting:
        if not os.path.isfile(setting):
            raise FileNotFoundError(f"FERJAX_TCMALLOC={setting!r} is not a file; point it at "
                                    "libtcmalloc_minimal.so.4, or set 0 to run without tcmalloc")
        return setting
    if not sys.platform.startswith("linux"):
        return None
    listed = {}
    for ldconfig in ("ldconfig", "/sbin/ldconfig", "/usr/sbin/ldconfig"):  # sbin: not on
        try:                                                               # every PATH
            cache = subprocess.run([ldconfig, "-p"], capture_output=True, text=True,
                                   timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        # Lines look like "\tlibtcmalloc_minimal.so.4 (libc6,x86-64) => /lib/.../x.so.4".
        for line in cache.splitlines():
            name, _, path = line.strip().partition(" => ")
            listed.setdefault(name.split(" ")[0], path)
        break
    return next((listed[name] for name in TCMALLOC_SONAMES if listed.get(name)), None)


def relaunch_under_tcmalloc(environ=os.environ, argv=None, execve=os.execve) -> str:
    """Re-executes this command (`sys.orig_argv`) with tcmalloc in LD_PRELOAD, where that
    helps: a CPU-only machine (no accelerator plugin, as in `ferjax.xla_tuning`) whose
    loader knows tcmalloc, and a process not already under tcmalloc or jemalloc. Returns,
    when it does not re-execute, why not, for the log. Call it first thing in a `__main__`.

    The relaunched process is marked so that it never relaunches again, even if the
    preload failed (the loader then prints why and the command runs on glibc's malloc).
    tcmalloc's report of allocations over 1 GiB (mek's step buffer) is turned off unless
    TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD is set."""
    from ferjax import xla_tuning

    if environ.get("FERJAX_TCMALLOC", "") == "0":
        return "malloc: tcmalloc off (FERJAX_TCMALLOC=0)"
    if environ.get(_RELAUNCHED):
        allocator = preloaded_allocator()
        return (f"malloc: {allocator} (LD_PRELOAD)" if allocator else
                f"malloc: glibc; preloading {environ.get('LD_PRELOAD')} failed")
    allocator = preloaded_allocator()
    if allocator:
        return f"malloc: {allocator} (LD_PRELOAD)"
    if any(xla_tuning._installed(name) for name in xla_tuning.ACCELERATOR_PLUGINS):
        return "malloc: glibc (an accelerator plugin is installed; tcmalloc left to the user)"
    library = find_tcmalloc(environ)
    if library is None:
        return ("malloc: glibc; tcmalloc would make CPU steps faster (README, Install): "
                "apt install libtcmalloc-minimal4, or set FERJAX_TCMALLOC to its path")
    env = dict(environ)
    env["LD_PRELOAD"] = ":".join(filter(None, [library, environ.get("LD_PRELOAD")]))
    env[_RELAUNCHED] = "1"
    env.setdefault("TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD", str(2**62))
    argv = list(sys.orig_argv if argv is None else argv)
    sys.stdout.flush()
    sys.stderr.flush()
    execve(sys.executable, [sys.executable, *argv[1:]], env)
    return f"malloc: relaunched under {library}"   # only reached with a test's execve
