"""Where a preset's train step spends its time on CPU: a per-thunk profile.

    python -m benchmarks.profile_step --preset baseline --batch 16 --image 224

Runs the step as `benchmarks.train_step` builds it, traces a few queued steps with
`jax.profiler` (XLA:CPU thunk events switched on), and prints the thunks' time per step
grouped by the kind of op at the heart of each (dot, convolution, reduce, transpose, select,
elementwise), then the largest thunks with their shapes and the jax operation they came
from. XLA runs independent thunks concurrently, so the kinds add up to more than the step.
XLA's own convolutions run on Eigen's thread pool after their thunk returns: most of their
time shows only in the step's total. Nothing is appended to RESULTS.md; the profile notes
there quote these tables.
"""

from __future__ import annotations

import collections
import gzip
import json
import os
import pathlib
import re
import sys
import tempfile

from ferjax import console

KINDS = ("convolution", "dot", "reduce", "transpose", "copy", "select")


def fused_ops(hlo: str) -> dict[str, list[str]]:
    """Instruction name -> the opcodes it runs (those of its fused computation, if any)."""
    computations = {name: re.findall(r"= \S+ ([a-z][\w\-]*)\(", body)
                    for name, body in re.findall(r"\n%?([\w.\-]+) [^\n]*\{\n(.*?)\n\}", hlo,
                                                 re.S)}
    ops = {}
    for name, opcode, rest in re.findall(r"\n\s*(?:ROOT )?%?([\w.\-]+) = \S+ ([a-z][\w\-]*)"
                                         r"\(([^\n]*)", hlo):
        called = re.search(r"calls=%?([\w.\-]+)", rest) if opcode == "fusion" else None
        ops[name] = computations.get(called.group(1), [opcode]) if called else [opcode]
    return ops


def kind_of(opcodes: list[str]) -> str:
    """The first of KINDS among a thunk's opcodes, else 'elementwise'."""
    return next((kind for kind in KINDS if kind in opcodes), "elementwise")


def thunk_times(trace: dict) -> tuple[collections.Counter, collections.Counter]:
    """Total microseconds and count per event name of a perfetto trace's complete events,
    leaving out Python frames ('$...') and the executor's own spans ('...::...')."""
    total, count = collections.Counter(), collections.Counter()
    for event in trace["traceEvents"]:
        name = event.get("name", "")
        if event.get("ph") == "X" and not name.startswith("$") and "::" not in name:
            total[name] += event["dur"]
            count[name] += 1
    return total, count


def report(total, count, hlo: str, steps: int, top: int) -> str:
    """The per-kind and top-thunk tables, in ms per step."""
    ops = fused_ops(hlo)
    known = {name: d for name, d in total.items() if name in ops}
    by_kind, thunks = collections.Counter(), collections.Counter()
    for name, micros in known.items():
        by_kind[kind_of(ops[name])] += micros
        thunks[kind_of(ops[name])] += count[name]
    lines = ["| kind | ms per step | thunks per step |", "|---|---|---|"]
    lines += [f"| {kind} | {micros / 1e3 / steps:.1f} | {thunks[kind] // steps} |"
              for kind, micros in by_kind.most_common()]
    lines += ["", "| thunk | ms per step | kind | shape | from |", "|---|---|---|---|---|"]
    for name, micros in sorted(known.items(), key=lambda item: -item[1])[:top]:
        line = re.search(r"\n\s*(?:ROOT )?%?" + re.escape(name) + r" = (\S+)([^\n]*)", hlo)
        origin = re.search(r'op_name="([^"]*)"', line.group(2)) if line else None
        shape, origin = (line.group(1) if line else ""), (origin.group(1) if origin else "")
        lines.append(f"| {name} | {micros / 1e3 / steps:.2f} | {kind_of(ops[name])} | "
                     f"{shape} | {origin.removeprefix('jit(train_step)/')[-60:]} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = console.command_parser("benchmarks.profile_step", __doc__)
    parser.add_argument("--preset", default="baseline")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--image", type=int, default=224)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--steps", type=int, default=3, help="queued steps traced")
    parser.add_argument("--top", type=int, default=30, help="largest thunks listed")
    parser.add_argument("--trace_dir", default=None, help="keep the trace here")
    args = parser.parse_args(argv)
    # Before JAX starts its CPU backend, which reads XLA_FLAGS once.
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_cpu_enable_xprof_traceme=true").strip()
    import jax

    from benchmarks.train_step import ferjax_stepper
    time_steps, _, compiled, _ = ferjax_stepper(args.preset, args.batch, args.image, args.dtype,
                                             warmup=3)
    step_ms = 1e3 * min(time_steps(args.steps) for _ in range(3))
    with tempfile.TemporaryDirectory() as tmp:
        trace_dir = pathlib.Path(args.trace_dir or tmp)
        with jax.profiler.trace(str(trace_dir), create_perfetto_trace=True):
            time_steps(args.steps)
        trace_file = max(trace_dir.rglob("*.trace.json.gz"), key=lambda p: p.stat().st_mtime)
        trace = json.load(gzip.open(trace_file))
    total, count = thunk_times(trace)
    print(f"{args.preset}, batch {args.batch}, {args.image} px, {args.dtype}: "
          f"{step_ms:.0f} ms a step untraced (best of 3 x {args.steps} queued steps)\n")
    print(report(total, count, compiled.as_text(), args.steps, args.top))


if __name__ == "__main__":
    from ferjax import malloc_tuning
    print(malloc_tuning.relaunch_under_tcmalloc(), file=sys.stderr)  # as the benchmarks
    main()
