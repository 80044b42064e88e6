"""Shared by the benchmarks: a description of the machine, and appending to RESULTS.md."""

from __future__ import annotations

import datetime
import math
import os
import pathlib
import platform

import numpy as np

import ferjax  # (sets ferjax's XLA:CPU flags before any benchmark starts JAX)
from ferjax import malloc_tuning

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
    allocator = malloc_tuning.preloaded_allocator()
    if allocator:
        parts.append(f"malloc: {allocator} (LD_PRELOAD)")
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


# Dense (no sparsity) bf16 peak of one device in FLOP/s, from the vendors' data sheets, by
# a piece of JAX's device_kind; the first piece found wins, so specific names come first.
BF16_PEAK_FLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12),
    ("H800", 989e12), ("A100", 312e12), ("L40S", 362e12), ("L4", 121e12),
    ("TPU v4", 275e12), ("TPU v5 lite", 197e12), ("TPU v5e", 197e12), ("TPU v5", 459e12),
    ("TPU v6 lite", 918e12), ("TPU v6e", 918e12),
)


def bf16_peak_flops(device_kind: str) -> float | None:
    """The device's dense bf16 peak FLOP/s, or None for a device not in BF16_PEAK_FLOPS."""
    for piece, flops in BF16_PEAK_FLOPS:
        if piece.lower() in device_kind.lower():
            return flops
    return None


def jaxpr_flops(jaxpr) -> float:
    """FLOPs of the convolutions and matrix products in a (closed) jaxpr, two per
    multiply-add, nested jaxprs included (a scan's body times its length, the costliest
    branch of a cond): model FLOPs, whatever the backend's compiler makes of them.

    XLA's own count (`compiled.cost_analysis()`) is what the compiler made: on GPU it has
    returned -1 or miscounted rewritten matrix products in some jax releases (jax issues
    16008, 22249) and adds a few FLOPs per element of every elementwise op. Counted here,
    a convolution's multiply-adds are those whose input tap lies inside the input: neither
    in its padding nor between the rows of a dilated input, so the input gradient of a
    strided convolution counts what the forward did, not the zeros its dilated form
    multiplies.
    """
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(
                lhs[d] for d in contract)
        elif name == "conv_general_dilated":
            total += _conv_flops(eqn)
        nested = []
        for value in eqn.params.values():
            items = value if isinstance(value, (tuple, list)) else (value,)
            costs = [jaxpr_flops(item) for item in items
                     if hasattr(item, "eqns") or hasattr(getattr(item, "jaxpr", None), "eqns")]
            if costs:
                nested.append(max(costs))  # cond branches: the costliest
        total += sum(nested) * (eqn.params.get("length", 1) if name == "scan" else 1)
    return total


def _conv_flops(eqn) -> float:
    p = eqn.params
    lhs, rhs = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
    out = eqn.outvars[0].aval.shape
    lhs_spec, rhs_spec, out_spec = p["dimension_numbers"]
    taps = 1
    for i, (low, _) in enumerate(p["padding"]):
        size, kernel, out_size = lhs[lhs_spec[2 + i]], rhs[rhs_spec[2 + i]], out[out_spec[2 + i]]
        lhs_dilation = (p["lhs_dilation"] or (1,) * len(p["padding"]))[i]
        rhs_dilation = (p["rhs_dilation"] or (1,) * len(p["padding"]))[i]
        # Position of each (output, kernel tap) pair in the padded, dilated input.
        at = (np.arange(out_size)[:, None] * p["window_strides"][i]
              + np.arange(kernel)[None, :] * rhs_dilation - low)
        taps *= int(np.count_nonzero((at >= 0) & (at <= (size - 1) * lhs_dilation)
                                     & (at % lhs_dilation == 0)))
    return 2.0 * out[out_spec[0]] * out[out_spec[1]] * rhs[rhs_spec[1]] * taps


def compiled_buffer_bytes(compiled) -> int | None:
    """Bytes of device memory XLA assigned to one call: arguments, outputs not aliased to
    (donated) arguments, and temporaries; None where the backend gives no analysis."""
    stats = compiled.memory_analysis()
    if stats is None:
        return None
    return int(stats.argument_size_in_bytes + stats.output_size_in_bytes
               - stats.alias_size_in_bytes + stats.temp_size_in_bytes)


def device_peak_bytes(device) -> int | None:
    """The allocator's peak bytes in use on `device` so far in this process (GPU, TPU);
    None on backends without memory statistics (CPU)."""
    stats = device.memory_stats()
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None
