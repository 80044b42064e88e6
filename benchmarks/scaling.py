"""Data-parallel scaling over 1, 2, 4, 8 devices: same result, per-device throughput.

    python -m benchmarks.scaling --preset baseline --image 64 --batch 32

Without accelerators this runs on 8 fake CPU devices (which share the machine's cores, so
per-device throughput falls as devices are added; the check that matters there is that
the sharded step's loss and parameters equal the single-device ones). On a multi-GPU or
TPU host it uses the real devices. Results are appended to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import pathlib
import sys
import time

import numpy as np

from ferjax import console

ROOT = pathlib.Path(__file__).resolve().parents[1]


def main(argv=None) -> None:
    parser = console.command_parser("benchmarks.scaling", __doc__)
    parser.add_argument("--preset", default="baseline")
    parser.add_argument("--image", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args(argv)

    import jax
    # Only the CPU backend reads this; it must be set before JAX touches any backend.
    jax.config.update("jax_num_cpu_devices", 8)
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P

    from benchmarks.common import append_result, machine_summary
    from ferjax.plan import make_recipe
    from ferjax.steps import make_mesh, make_train_step, replicated_model_and_optimizer, to_global
    from ferjax.checkpoint import model_state
    from ferjax.presets import load_config_file

    config = load_config_file(ROOT / "configs" / "synthetic.py", args.preset)
    config.data.image_size = args.image
    config.optim.name, config.optim.momentum = "sgd", 0.0  # keeps float noise unamplified
    recipe = make_recipe(config)
    rng = np.random.default_rng(0)
    host = {"image": rng.integers(0, 255, (args.batch, args.image, args.image, 3), np.uint8),
            "label": rng.integers(0, 7, args.batch).astype(np.int32)}
    if recipe.needs_second_stream:
        host["image_rev"], host["label_rev"] = host["image"][::-1].copy(), host["label"]
    rows, reference = [], None
    for n in (1, 2, 4, 8):
        if n > jax.device_count() or args.batch % n:
            continue
        mesh = make_mesh(jax.devices()[:n])
        model, optimizer = replicated_model_and_optimizer(config, mesh, 7, 100, 1000)
        with jax.set_mesh(mesh):
            step, state, write_back = make_train_step(recipe, model, optimizer)
            batch = to_global(host, NamedSharding(mesh, P("data")))
            extra = (jnp.float32(0.5), jnp.ones(7), jnp.ones(7))
            state, first = step(state, batch, jnp.int32(0), jax.random.key(0), *extra)
            write_back(state)
            params = [np.asarray(x) for x in jax.tree.leaves(model_state(model))]
            if reference is None:
                reference = (float(first["loss"]), params)
            diff = max(float(np.max(np.abs(a - b))) for a, b in zip(params, reference[1]))
            start = time.perf_counter()
            for i in range(args.steps):
                state, out = step(state, batch, jnp.int32(i + 1), jax.random.key(0), *extra)
            jax.block_until_ready(out)
            rate = args.steps * args.batch / (time.perf_counter() - start)
        row = (f"| {n} | {args.batch} | {rate:.1f} | {rate / n:.1f} | "
               f"{abs(float(first['loss']) - reference[0]):.2e} | {diff:.2e} |")
        print(row, flush=True)
        rows.append(row)
    append_result(f"Scaling, preset {args.preset}, {args.image} px", machine_summary(),
                  "| devices | global batch | img/s | img/s per device | loss diff vs 1 | "
                  "max param diff vs 1 |\n|---|---|---|---|---|---|", rows,
                  f"`python -m benchmarks.scaling --preset {args.preset} --image {args.image} "
                  f"--batch {args.batch}`; first step compared with the 1-device step (SGD, "
                  f"same batch), then {args.steps} timed steps.")


if __name__ == "__main__":
    from ferjax import malloc_tuning
    print(malloc_tuning.relaunch_under_tcmalloc(), file=sys.stderr)  # as ferjax.main
    main()
