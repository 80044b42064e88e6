"""Train-step variants of one preset, timed against each other in one process.

    python -m benchmarks.variants --preset rul_cbam shipped 'no_cbam=model.cbam_placement:none'
    python -m benchmarks.variants --preset baseline shipped \\
        'reductions_only=xla_cpu_experimental_ynn_fusion_type:LIBRARY_FUSION_TYPE_REDUCE'

A variant is `NAME` (the preset as shipped) or `NAME=KEY:VALUE;KEY:VALUE...`. A KEY that
starts with `xla_` is an XLA compile option for this variant alone (`Lowered.compile`; the
same names as XLA_FLAGS, which XLA reads only once a process); any other KEY is a config
field (`model.width:8`, `augment.ops:flip,normalize`). Every variant gets its own model
and optimizer state and is compiled with its options, and the variants take turns in
`--rounds` rounds of `--steps` queued steps. A process's speed drifts by 10-20 % over
minutes on shared machines, so only variants measured side by side in one process compare
well. Results are appended to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import sys

import numpy as np

from benchmarks.common import append_result, machine_summary
from benchmarks.train_step import ferjax_stepper
from ferjax import console


def parse_variant(spec: str) -> tuple[str, dict, dict]:
    """'name=xla_opt:v;model.width:8' -> (name, compiler options, config overrides).

    Compile option values 'true' / 'false' become bools; the rest stay strings (XLA parses
    numbers and enum names itself)."""
    name, _, settings = spec.partition("=")
    if not name:
        raise ValueError(f"variant {spec!r}: no name before '='")
    options, overrides = {}, {}
    for item in filter(None, settings.split(";")):
        key, sep, value = item.partition(":")
        if not sep or not key:
            raise ValueError(f"variant {spec!r}: {item!r} is not KEY:VALUE")
        if key.startswith("xla_"):
            options[key] = {"true": True, "false": False}.get(value.lower(), value)
        else:
            overrides[key] = value
    return name, options, overrides


def main(argv=None) -> None:
    parser = console.command_parser("benchmarks.variants", __doc__)
    parser.add_argument("variants", nargs="+", help="NAME or NAME=KEY:VALUE;KEY:VALUE...")
    parser.add_argument("--preset", default="baseline")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--image", type=int, default=224)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--steps", type=int, default=8, help="queued steps a round, each")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps, queued")
    args = parser.parse_args(argv)
    variants = [parse_variant(spec) for spec in args.variants]
    names = [name for name, _, _ in variants]
    if len(set(names)) != len(names):
        raise ValueError(f"variant names repeat: {names}")

    timers = []
    for name, options, overrides in variants:
        time_steps, *_ = ferjax_stepper(args.preset, args.batch, args.image, args.dtype,
                                          args.warmup, overrides=overrides,
                                          compiler_options=options)
        timers.append(time_steps)
        print(f"{name}: compiled and warmed up", flush=True)
    ms = [[] for _ in variants]
    for r in range(args.rounds):
        for times, time_steps in zip(ms, timers):
            times.append(1e3 * time_steps(args.steps))
        print(f"round {r}: " + ", ".join(f"{n} {t[-1]:.0f} ms" for n, t in zip(names, ms)),
              flush=True)
    first = np.median(ms[0])
    rows = []
    for (name, options, overrides), times in zip(variants, ms):
        settings = "; ".join(f"`{k}={v}`" for k, v in {**overrides, **options}.items())
        rows.append(f"| {name} | {settings or 'as shipped'} | {min(times):.0f} | "
                    f"{np.median(times):.0f} | {np.median(times) / first:.3f} |")
        print(rows[-1], flush=True)
    header = ("| variant | settings | min ms | median ms | median / first |\n"
              "|---|---|---|---|---|")
    command = " ".join(["python -m benchmarks.variants", f"--preset {args.preset}",
                        f"--batch {args.batch} --image {args.image} --dtype {args.dtype}",
                        f"--steps {args.steps} --rounds {args.rounds} --warmup {args.warmup}",
                        *(f"'{spec}'" for spec in args.variants)])
    append_result(f"Train-step variants, preset {args.preset}", machine_summary(), header,
                  rows, f"`{command}`; each variant its own state and compiled step; "
                  f"{args.rounds} rounds taking turns, {args.steps} queued steps a variant "
                  "a round, one wait a round; ms a step.")


if __name__ == "__main__":
    from ferjax import malloc_tuning
    print(malloc_tuning.relaunch_under_tcmalloc(), file=sys.stderr)  # as ferjax.main
    main()
