"""The glibc malloc settings ferjax applies on import: what they set, the opt-out, and that a
large block freed by one thread is reused without fresh page faults."""

import os
import platform
import subprocess
import sys

import pytest

from ferjax import malloc_tuning


class RecordingLibc:
    def __init__(self, result=1):
        self.calls, self.result = [], result

    def mallopt(self, param, value):
        self.calls.append((param, value))
        return self.result


def test_sets_one_arena_no_mmap_and_a_high_trim_threshold():
    libc = RecordingLibc()
    assert malloc_tuning.apply({}, libc) == ["M_ARENA_MAX", "M_MMAP_MAX", "M_TRIM_THRESHOLD"]
    assert libc.calls == [(-8, 1), (-4, 0), (-1, -1)]


def test_opt_out_and_refused_settings():
    libc = RecordingLibc()
    assert malloc_tuning.apply({"FERJAX_MALLOC_TUNING": "0"}, libc) == [] and libc.calls == []
    assert malloc_tuning.apply({}, RecordingLibc(result=0)) == []   # mallopt said no
    assert malloc_tuning.apply({}, object()) == []                  # a libc without mallopt


# Mallocs a 256 MiB block in a worker thread, touches it, frees it, and counts the minor
# page faults of doing that a second time.
_REUSE_PROBE = """
import ctypes, resource, threading
import ferjax  # applies the settings unless FERJAX_MALLOC_TUNING=0
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size, faults = 256 * 2**20, []
def once():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
for _ in range(2):
    worker = threading.Thread(target=once)
    worker.start()
    worker.join()
print(faults[1])
"""


def _second_round_faults(tuning: str) -> int:
    env = dict(os.environ, FERJAX_MALLOC_TUNING=tuning, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", _REUSE_PROBE], env=env, check=True,
                         capture_output=True, text=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_a_freed_large_block_is_reused_without_page_faults():
    pages = 256 * 2**20 // 4096
    assert _second_round_faults("0") > pages // 4     # glibc's default: a fresh mmap
    assert _second_round_faults("1") < pages // 100   # tuned: the same heap memory again


# Frees a block larger than any positive C int (mallopt's argument) and reports whether the
# heap kept it: VmData, the process's data size, before and after the free (kB).
_TRIM_PROBE = """
import ctypes
import ferjax
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def data_kb():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmData"))
block = libc.malloc(5 * 2**29)   # 2.5 GiB of address space, never touched
held = data_kb()
libc.free(block)
print(held, data_kb())
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_the_heap_keeps_a_freed_block_above_two_gib():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    result = {}
    for tuning in "01":
        out = subprocess.run([sys.executable, "-c", _TRIM_PROBE], check=True, text=True,
                             env=dict(env, FERJAX_MALLOC_TUNING=tuning), capture_output=True)
        held, after = map(int, out.stdout.split())
        result[tuning] = held - after
    assert result["0"] > 2 * 2**20        # glibc's default gives the 2.5 GiB back (kB)
    assert result["1"] == 0               # tuned: kept for the next step
