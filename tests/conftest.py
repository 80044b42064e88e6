"""Test setup: 4 fake CPU devices and fast compiles, set before JAX initialises."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Commands the tests run (in process or not) compile afresh unless a test says otherwise.
os.environ["FERJAX_COMPILATION_CACHE"] = ""
import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 4)
jax.config.update("jax_disable_most_optimizations", True)

import pathlib  # noqa: E402

import pytest  # noqa: E402

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared"
RAFDB_LABELS = SHARED / "data" / "rafdb" / "list_patition_label.txt"


@pytest.fixture(scope="session")
def rafdb_label_file():
    if not RAFDB_LABELS.exists():
        pytest.skip(f"the real RAF-DB label file is not at {RAFDB_LABELS}")
    return RAFDB_LABELS
