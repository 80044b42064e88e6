"""The glibc malloc settings ferjax applies on import: what they set, the opt-out, and that a
large block freed by one thread is reused without fresh page faults; relaunching a command
under tcmalloc."""

import os
import platform
import subprocess
import sys

import pytest

from ferjax import malloc_tuning, xla_tuning


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


def test_nothing_is_set_under_a_preloaded_allocator(monkeypatch, tmp_path):
    monkeypatch.setattr(malloc_tuning, "preloaded_allocator", lambda: "tcmalloc")
    assert malloc_tuning.apply({}) == []
    maps = tmp_path / "maps"
    maps.write_text("7f00-7f01 r-xp 0 08:01 1 /usr/lib/libjemalloc.so.2\n")
    monkeypatch.undo()
    assert malloc_tuning.preloaded_allocator(str(maps)) == "jemalloc"
    maps.write_text("7f00-7f01 r-xp 0 08:01 1 /usr/lib/libc.so.6\n")
    assert malloc_tuning.preloaded_allocator(str(maps)) is None
    assert malloc_tuning.preloaded_allocator(str(tmp_path / "none")) is None


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


def test_find_tcmalloc_takes_the_setting_or_asks_the_loader(tmp_path):
    library = tmp_path / "libtcmalloc_minimal.so.4"
    library.write_bytes(b"")
    assert malloc_tuning.find_tcmalloc({"FERJAX_TCMALLOC": "0"}) is None
    assert malloc_tuning.find_tcmalloc({"FERJAX_TCMALLOC": str(library)}) == str(library)
    with pytest.raises(FileNotFoundError, match="FERJAX_TCMALLOC='/no/such/lib.so'"):
        malloc_tuning.find_tcmalloc({"FERJAX_TCMALLOC": "/no/such/lib.so"})
    found = malloc_tuning.find_tcmalloc({})
    assert found is None or (os.path.isfile(found)
                             and os.path.basename(found) in malloc_tuning.TCMALLOC_SONAMES)


class RecordingExec:
    def __init__(self):
        self.calls = []

    def __call__(self, path, argv, env):
        self.calls.append((path, argv, env))


def test_relaunch_preloads_tcmalloc_once_and_only_on_cpu_machines(tmp_path, monkeypatch):
    library = str(tmp_path / "libtcmalloc_minimal.so.4")
    open(library, "wb").close()
    plugin = {"installed": False}
    monkeypatch.setattr(xla_tuning, "_installed", lambda name: plugin["installed"])
    monkeypatch.setattr(malloc_tuning, "preloaded_allocator", lambda: None)
    argv = ["python", "-m", "ferjax.main", "--config", "c.py"]

    execve = RecordingExec()
    malloc_tuning.relaunch_under_tcmalloc(
        {"FERJAX_TCMALLOC": library, "LD_PRELOAD": "libother.so"}, argv, execve)
    (path, new_argv, env), = execve.calls
    assert path == sys.executable and new_argv == [sys.executable, *argv[1:]]
    assert env["LD_PRELOAD"] == f"{library}:libother.so"
    assert env["FERJAX_RELAUNCHED_UNDER_TCMALLOC"] == "1"
    assert int(env["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"]) > 2**40

    for environ, installed, why in (
            ({"FERJAX_TCMALLOC": "0"}, False, "off"),
            ({"FERJAX_TCMALLOC": library, "FERJAX_RELAUNCHED_UNDER_TCMALLOC": "1",
              "LD_PRELOAD": library}, False, "failed"),     # relaunched, preload failed
            ({"FERJAX_TCMALLOC": library}, True, "accelerator plugin")):
        plugin["installed"] = installed
        execve = RecordingExec()
        assert why in malloc_tuning.relaunch_under_tcmalloc(environ, argv, execve)
        assert execve.calls == []
    plugin["installed"] = False
    monkeypatch.setattr(malloc_tuning, "preloaded_allocator", lambda: "jemalloc")
    execve = RecordingExec()
    assert "jemalloc" in malloc_tuning.relaunch_under_tcmalloc({"FERJAX_TCMALLOC": library},
                                                               argv, execve)
    assert execve.calls == []


_RELAUNCH_PROBE = """
import os
from ferjax import malloc_tuning
note = malloc_tuning.relaunch_under_tcmalloc()
print(os.environ.get("LD_PRELOAD"), malloc_tuning.preloaded_allocator(), note, sep="|")
"""

_plugins = pytest.mark.skipif(
    any(xla_tuning._installed(name) for name in xla_tuning.ACCELERATOR_PLUGINS),
    reason="relaunching is for CPU-only machines")


def _relaunch_probe(**settings) -> list[str]:
    """Runs _RELAUNCH_PROBE in a process that starts without a preload of its own."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("LD_PRELOAD", "FERJAX_TCMALLOC", "FERJAX_RELAUNCHED_UNDER_TCMALLOC")}
    env.update(settings)
    out = subprocess.run([sys.executable, "-c", _RELAUNCH_PROBE], env=env, check=True,
                         capture_output=True, text=True, timeout=120)  # a relaunch loop
    return out.stdout.strip().split("|")


@_plugins
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD is Linux's")
def test_relaunch_reexecutes_the_command_once_with_the_library_preloaded():
    # Any real library shows the mechanism; this process's own libc is harmless to preload.
    libc = next(line.split()[-1] for line in open("/proc/self/maps")
                if "/libc.so" in line or "/libc-" in line)
    preload, allocator, note = _relaunch_probe(FERJAX_TCMALLOC=libc)
    assert preload == libc and allocator == "None"
    assert "failed" in note   # relaunched once, saw no tcmalloc, did not loop


@_plugins
@pytest.mark.skipif(malloc_tuning.find_tcmalloc({}) is None,
                    reason="no tcmalloc here (Debian: libtcmalloc-minimal4)")
def test_relaunch_runs_the_command_under_the_machines_tcmalloc():
    preload, allocator, note = _relaunch_probe()
    assert allocator == "tcmalloc" and note == "malloc: tcmalloc (LD_PRELOAD)"
