"""JAX's persistent compilation cache, shared by every ferjax command.

A resumed run, a second run of the same config, `ferjax.evaluate` and `ferjax.predict` then
load their compiled steps from disk instead of compiling them again.
"""

from __future__ import annotations

import importlib.util
import os

MAX_BYTES = 2 * 2**30
HELP = ("folder of compiled steps that later runs reuse instead of compiling again (at most "
        "2 GiB, least recently used first out); '' = off. Default: $FERJAX_COMPILATION_CACHE "
        "or ~/.cache/ferjax/jax")


def default_folder() -> str:
    """$FERJAX_COMPILATION_CACHE if set (possibly to '' = off), else ~/.cache/ferjax/jax."""
    return os.environ.get("FERJAX_COMPILATION_CACHE", "~/.cache/ferjax/jax")


def use(folder: str) -> str:
    """Points JAX's persistent compilation cache at `folder`; returns a note for the log.
    A folder that cannot be written leaves the cache off rather than failing the run."""
    import jax
    if not folder:
        return "compilation cache: off"
    folder = os.path.expanduser(folder)
    try:
        os.makedirs(folder, exist_ok=True)
        writable = os.access(folder, os.W_OK)
    except OSError:
        writable = False
    if not writable:
        return f"compilation cache: off ({folder} is not writable)"
    jax.config.update("jax_compilation_cache_dir", folder)
    if importlib.util.find_spec("filelock") is None:  # JAX needs it to keep to a size limit
        return f"compilation cache: {folder} (no size limit: filelock is not installed)"
    jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    return f"compilation cache: {folder}"
