"""Shared by the benchmarks: a description of the machine, and appending to RESULTS.md."""

from __future__ import annotations

import datetime
import os
import pathlib
import platform

RESULTS = pathlib.Path(__file__).resolve().parent / "RESULTS.md"


def machine_summary() -> str:
    import jax
    parts = [f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores",
             f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}",
             f"python {platform.python_version()}", f"jax {jax.__version__}"]
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
