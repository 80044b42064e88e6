"""Test setup: 4 fake CPU devices and fast compiles, set before JAX initialises."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The commands the tests run leave JAX's compilation cache as the tests set it.
os.environ["FERJAX_COMPILATION_CACHE"] = ""
import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 4)
jax.config.update("jax_disable_most_optimizations", True)
# One persistent compilation cache per test process (a fresh folder; `-n 2` runs two): the
# many tests that train the same tiny config compile its step once (JAX caches compiles of
# 1 s or more).
# Commands run as subprocesses still compile afresh unless a test hands them a cache.
_CACHE = tempfile.mkdtemp(prefix="ferjax-tests-jax-")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", _CACHE)

import pathlib  # noqa: E402

import pytest  # noqa: E402

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared"
RAFDB_LABELS = SHARED / "data" / "rafdb" / "list_patition_label.txt"


@pytest.fixture(scope="session")
def rafdb_label_file():
    if not RAFDB_LABELS.exists():
        pytest.skip(f"the real RAF-DB label file is not at {RAFDB_LABELS}")
    return RAFDB_LABELS


@pytest.fixture
def compiles_afresh():
    """The session's compilation cache off for a test about the time a compile takes."""
    from jax.experimental.compilation_cache import compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    compilation_cache.reset_cache()
    yield
    jax.config.update("jax_enable_compilation_cache", True)
    compilation_cache.reset_cache()
