"""XLA:CPU settings that make ferjax's training step faster, applied on import.

Measured on a 2-core Intel Xeon (Sapphire Rapids) with jaxlib 0.10.2 (benchmarks/RESULTS.md):
jaxlib 0.10 sends every convolution through YNNPACK by default, whose convolutions are 2-3x
slower here than XLA's Eigen convolutions (56x56x64 3x3 forward 28 -> 16 ms, weight
gradient 100 -> 29 ms); removing that one fusion type took the ResNet-18 step from 7.4 to
12.8 images/s. On a 2-core AMD EPYC (AVX-512), preferring 512-bit vectors took the same step
(224 px, batch 16) from 754-797 to 730-772 ms and mek's from 1,525-1,643 to 1,504-1,557 ms
(three alternating runs each). The flags only exist in the jaxlib versions listed, and an
unknown XLA flag aborts the process, so other versions are left alone.

Set FERJAX_XLA_TUNING=0 to turn this off. Flags already in XLA_FLAGS are never overridden.
Machines with a GPU or TPU plugin installed are left alone too (their XLA builds parse
XLA_FLAGS as well, and the CPU's speed does not matter there). It only has an effect when
ferjax is imported before JAX creates its CPU backend.
"""

from __future__ import annotations

import importlib.metadata
import os

# Distributions that bring an accelerator backend (and their own XLA flag parser).
ACCELERATOR_PLUGINS = ("libtpu", "libtpu-nightly", "jax-cuda12-plugin", "jax-cuda13-plugin",
                       "jax-rocm60-plugin", "jax-rocm7-plugin")

# jaxlib "major.minor" -> (flag name, value) pairs verified on that version.
CPU_FLAGS: dict[str, tuple[tuple[str, str], ...]] = {
    "0.10": (("--xla_cpu_experimental_ynn_fusion_type", "-individual_convolution"),
             # 512-bit vectors in XLA's own loops (layout copies, BatchNorm) on AVX-512
             # CPUs; LLVM keeps narrower ones on CPUs without it.
             ("--xla_cpu_prefer_vector_width", "512")),
}


def flags_for(jaxlib_version: str) -> tuple[tuple[str, str], ...]:
    """The tuned flags for a jaxlib version string such as '0.10.2' (empty if untested)."""
    major_minor = ".".join(jaxlib_version.split(".")[:2])
    return CPU_FLAGS.get(major_minor, ())


def apply(environ=os.environ) -> list[str]:
    """Appends the tuned flags to environ['XLA_FLAGS']; returns the flags it added."""
    if environ.get("FERJAX_XLA_TUNING", "1") == "0":
        return []
    try:
        version = importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return []
    if any(_installed(name) for name in ACCELERATOR_PLUGINS):
        return []
    current = environ.get("XLA_FLAGS", "")
    added = [f"{name}={value}" for name, value in flags_for(version) if name not in current]
    if added:
        environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
    return added


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.version(distribution)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False
