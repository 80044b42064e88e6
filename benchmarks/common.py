"""Shared by the benchmarks: a description of the machine, and appending to RESULTS.md."""

from __future__ import annotations

import datetime
import os
import pathlib
import platform

import ferjax  # (sets ferjax's XLA:CPU flags before any benchmark starts JAX)

RESULTS = pathlib.Path(__file__).resolve().parent / "RESULTS.md"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else the platform's machine type."""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_summary() -> str:
    import jax
    parts = [f"{cpu_model()}, {os.cpu_count()} CPU cores",
             f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}",
             f"python {platform.python_version()}", f"jax {jax.__version__}"]
    parts.append("ferjax malloc tuning: " + ("+".join(ferjax.malloc_settings) or "off"))
    if os.environ.get("XLA_FLAGS"):
        parts.append(f"XLA_FLAGS='{os.environ['XLA_FLAGS']}'")
    try:
        import flax
        parts.append(f"flax {flax.__version__}")
    except ImportError:
        pass
    try:
        import torch
        parts.append(f"torch {torch.__version__} ({torch.get_num_threads()} threads)")
    except ImportError:
        pass
    return ", ".join(parts)


def append_result(title: str, machine: str, header: str, rows: list[str], how: str) -> None:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    with open(RESULTS, "a") as f:
        f.write(f"\n### {title} — {stamp}\n\nMachine: {machine}.\n\n{header}\n")
        f.write("\n".join(rows) + "\n\n" + how + "\n")
