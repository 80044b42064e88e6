"""Train-step throughput of each preset, ferjax against the same step written in PyTorch.

    python -m benchmarks.train_step                       # all presets, 224 px, batch 16
    python -m benchmarks.train_step --presets mek --batch 64 --dtype bfloat16
    python -m benchmarks.train_step --presets mek_swin --batch 32 --image 112

Both sides run the same architecture, loss, optimizer and batch size on the same machine in
one invocation. ferjax's step includes its on-device augmentation and, as configs/rafdb.py
runs it, the resize of the host's 100 px batches to --image (`--host_image`); the PyTorch
step gets ready tensors, as from a DataLoader. So the comparison does not favour ferjax;
`--augment normalize` keeps only the normalisation, for a like-for-like step. On CUDA the
PyTorch step uses AMP (bf16 autocast), channels_last and cuDNN autotuning. It runs in a child
process. Where ferjax runs under tcmalloc (`python -m benchmarks.train_step` relaunches
itself under it, as `ferjax.main` does, when the machine has it) the PyTorch process gets
tcmalloc too; otherwise glibc's default malloc, as a PyTorch user runs it.
`--torch_malloc` picks it explicitly: `default`, `ferjax` (glibc with ferjax's settings,
`ferjax.malloc_tuning`) or `tcmalloc`. The two sides take turns
in `--rounds` rounds (one idles on a pipe while the other runs), and the ratio is the
median of the rounds' ratios: a ratio from one stretch of time, on machines whose speed
drifts. Each row also gives the step's FLOPs rate (the convolutions and matrix products
in its jaxpr, `benchmarks.common.jaxpr_flops`), its model FLOPs utilisation against the
device's dense bf16 peak (known GPUs and TPUs, or `--peak_tflops`), the memory XLA
assigned to the step, and on GPU/TPU the allocator's peak. Results are appended to
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np

from benchmarks.common import (append_result, bf16_peak_flops, compiled_buffer_bytes,
                               device_peak_bytes, jaxpr_flops, machine_summary)
from ferjax import console

PRESETS = ("baseline", "rul_cbam", "mek", "rlrcnet")


def ferjax_stepper(preset: str, batch: int, image: int, dtype: str, warmup: int,
                   flip_bn: str = "joint", augment: str = "preset", overrides=None,
                   compiler_options=None):
    """Builds and warms up the preset's jitted step; returns `time_steps(n)`, seconds per
    step with n steps queued back to back, `dispatch_time(n)`, the median seconds until
    a step call returns (the host's share, which a fast accelerator step cannot hide), the
    compiled step (for its memory analysis) and the step's model FLOPs (`jaxpr_flops`).

    The step gets uint8 batches of the side the host pipeline would deliver,
    `config.data.host_image_size` (configs/rafdb.py: 100, resized to `image` in the step),
    or `image` where that is 0.
    `overrides` ({'model.width': 8, ...}) are set on the config after the arguments above.
    With `compiler_options` (a dict, maybe empty) the step is compiled once with those XLA
    options (`Lowered.compile`) and that executable is called, not the jitted function."""
    import pathlib

    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P

    from ferjax.plan import host_image_size, make_recipe
    from ferjax.steps import make_mesh, make_train_step, replicated_model_and_optimizer, to_global
    from ferjax.presets import load_config_file

    config = load_config_file(pathlib.Path(__file__).resolve().parents[1] / "configs" /
                              "rafdb.py", preset)
    config.data.image_size = image
    config.train.batch_size = batch
    config.model.dtype = dtype
    config.loss.flip_bn = flip_bn
    if augment == "normalize":  # what the PyTorch step gets: ready, normalised tensors
        config.augment.ops = ("normalize",)
    for key, value in (overrides or {}).items():
        set_config_field(config, key, value)
    batch, side = config.train.batch_size, host_image_size(config.data)
    recipe = make_recipe(config)
    mesh = make_mesh()
    rng = np.random.default_rng(0)
    host = {"image": rng.integers(0, 255, (batch, side, side, 3), dtype=np.uint8),
            "label": rng.integers(0, 7, batch).astype(np.int32)}
    if recipe.needs_second_stream:
        host["image_rev"] = host["image"][::-1].copy()
        host["label_rev"] = host["label"][::-1].copy()
    model, optimizer = replicated_model_and_optimizer(config, mesh, 7, 100, 10_000)
    with jax.set_mesh(mesh):
        step_fn, state, _ = make_train_step(recipe, model, optimizer)
        gbatch = to_global(host, NamedSharding(mesh, P("data")))
        key, weights = jax.random.key(0), jnp.ones(7)

        traced = step_fn.trace(state, gbatch, jnp.int32(0), key, jnp.float32(0.5), weights,
                               weights)
        # The jaxpr holds the global batch's work; each device does its share of it.
        flops, lowered = jaxpr_flops(traced.jaxpr) / mesh.size, traced.lower()
        if compiler_options is not None:
            step_fn = compiled = lowered.compile(compiler_options or None)

        def run(i):
            nonlocal state
            state, out = step_fn(state, gbatch, jnp.int32(i), key, jnp.float32(0.5), weights,
                                 weights)
            return out

        jax.block_until_ready(run(0))   # compiles (jit) or runs the compiled step once
        if compiler_options is None:
            # The executable jit just built (its cache answers; nothing is compiled again).
            compiled = lowered.compile()
        # Warm up in the timed pattern (steps queued, one wait at the end): queued steps
        # hold more memory at once (rul_cbam: 3.8 GB against 2.4 blocked), and the heap's
        # first growth to that peak page-faults (44,000 faults and +25 % a step, once).
        jax.block_until_ready([run(i) for i in range(warmup)])

    def time_steps(steps: int) -> float:
        with jax.set_mesh(mesh):
            start = time.perf_counter()
            for i in range(steps):
                out = run(i)
            jax.block_until_ready(out)
        return (time.perf_counter() - start) / steps

    def dispatch_time(steps: int) -> float:
        with jax.set_mesh(mesh):
            dispatch = []
            for i in range(steps):
                start = time.perf_counter()
                out = run(i)
                dispatch.append(time.perf_counter() - start)
                jax.block_until_ready(out)
        return float(np.median(dispatch))

    return time_steps, dispatch_time, compiled, flops


def set_config_field(config, key: str, value) -> None:
    """Sets `config.<key>` (dotted) to `value`, converting a string to the field's type
    (bool from true/false, tuple from comma-separated items); KeyError for unknown keys."""
    node, *path = config, *key.split(".")
    for part in path[:-1]:
        if part not in node:
            raise KeyError(f"config has no field {key!r} (no {part!r})")
        node = node[part]
    if path[-1] not in node:
        raise KeyError(f"config has no field {key!r}")
    old = node[path[-1]]
    if isinstance(value, str) and not isinstance(old, str) and old is not None:
        if isinstance(old, bool):
            if value.lower() not in ("true", "false"):
                raise ValueError(f"{key}={value!r}: expected true or false")
            value = value.lower() == "true"
        elif isinstance(old, tuple):
            value = tuple(item for item in value.split(",") if item)
        else:
            value = type(old)(value)
    node[path[-1]] = value


def step_usage(compiled, flops: float, seconds_per_step: float,
               peak_tflops: float | None) -> str:
    """Table cells 'TFLOP/s | MFU | step buffers GiB | device peak GiB' of a compiled step
    of `flops` that took `seconds_per_step`; '—' where the backend or the peak is unknown."""
    import jax

    device = jax.local_devices()[0]
    peak = peak_tflops * 1e12 if peak_tflops else bf16_peak_flops(device.device_kind)
    buffers, device_peak = compiled_buffer_bytes(compiled), device_peak_bytes(device)
    cells = [f"{flops / seconds_per_step / 1e12:.3f}" if flops else "—",
             f"{100 * flops / seconds_per_step / peak:.1f} %" if flops and peak else "—",
             f"{buffers / 2**30:.2f}" if buffers else "—",
             f"{device_peak / 2**30:.2f}" if device_peak else "—"]
    return " | ".join(cells)


def torch_stepper(preset: str, batch: int, image: int, warmup: int, flip_bn: str = "joint",
                  microbatches: int = 1):
    """The same step in PyTorch, warmed up; returns `time_steps(n)`: seconds per step.
    With `microbatches` > 1 the batch's parts go through forward and backward in turn,
    gradients accumulating, before the one optimizer step (PyTorch's gradient accumulation)."""
    import torch

    from benchmarks import torch_reference as R

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = {"baseline": R.TorchBaseline, "rul_cbam": lambda: R.TorchRUL(spatial=image // 32),
             "mek": R.TorchMEK, "mek_swin": lambda: R.TorchMEKSwin(image_size=image),
             "rlrcnet": R.TorchRLRCNet}[preset]().to(device)
    if preset == "rlrcnet":
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    elif preset == "mek_swin":
        opt = torch.optim.AdamW(model.parameters(), lr=3.125e-5, weight_decay=0.05)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=2e-4, weight_decay=1e-4)
    if device == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest
        model = model.to(memory_format=torch.channels_last)
    x = torch.rand(batch, 3, image, image, device=device)
    if device == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 7, (batch,), device=device)
    weights = torch.ones(7, device=device)
    table = torch.full((7, 7), 0.05, device=device) + 0.65 * torch.eye(7, device=device)

    def loss(x, y):
        if preset == "baseline":
            return model.loss(x, y)
        if preset == "rul_cbam":
            return model.loss(x, y, weights)
        if preset == "mek":
            return model.loss(x, y, table, weights, separate=flip_bn == "separate")
        if preset == "mek_swin":
            return model.loss(x, y, table, weights)
        return model.loss(x, y, x.flip(0), y.flip(0), 0.5)

    def step():
        opt.zero_grad(set_to_none=True)
        for x_part, y_part in zip(x.chunk(microbatches), y.chunk(microbatches)):
            with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
                value = loss(x_part, y_part) / microbatches
            value.backward()
        if preset == "mek_swin":  # the preset clips gradients at global norm 5
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()

    model.train()
    for _ in range(warmup):
        step()

    def time_steps(steps: int) -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        if device == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / steps

    return time_steps


def serve_torch_steps(preset: str, batch: int, image: int, warmup: int, flip_bn: str,
                      microbatches: int = 1) -> None:
    """The child's side of TorchChild: a warmed-up step, then one timing per stdin line."""
    time_steps = torch_stepper(preset, batch, image, warmup, flip_bn, microbatches)
    print("ready", flush=True)
    for line in sys.stdin:
        print(f"seconds {time_steps(int(line))!r}", flush=True)


TORCH_MALLOCS = ("default", "ferjax", "tcmalloc")


def torch_child_env(malloc: str, environ=os.environ) -> dict:
    """The PyTorch process's environment for `malloc`, one of TORCH_MALLOCS: glibc's
    defaults, glibc with ferjax's settings, or tcmalloc preloaded. Allocators in this
    process's LD_PRELOAD are not inherited, so each choice is what it says."""
    from ferjax import malloc_tuning
    if malloc not in TORCH_MALLOCS:
        raise ValueError(f"--torch_malloc {malloc!r}: expected one of {TORCH_MALLOCS}")
    kept = [lib for lib in environ.get("LD_PRELOAD", "").replace(" ", ":").split(":")
            if lib and "tcmalloc" not in lib and "jemalloc" not in lib]
    if malloc == "tcmalloc":
        library = malloc_tuning.find_tcmalloc(environ)
        if library is None:
            raise FileNotFoundError("--torch_malloc tcmalloc: no tcmalloc on this machine "
                                    "(apt install libtcmalloc-minimal4)")
        kept.insert(0, library)
    env = dict(environ, FERJAX_MALLOC_TUNING="1" if malloc == "ferjax" else "0",
               LD_PRELOAD=":".join(kept))
    if not kept:
        del env["LD_PRELOAD"]
    return env


class TorchChild:
    """The PyTorch step in its own Python process, kept alive so that its timings can
    alternate with ferjax's, with the malloc `torch_child_env` gives it. Idle between
    requests (blocked on a pipe)."""

    def __init__(self, preset: str, batch: int, image: int, warmup: int, flip_bn: str,
                 malloc: str, microbatches: int = 1):
        code = ("import ferjax; " if malloc == "ferjax" else "") + (
            "from benchmarks.train_step import serve_torch_steps; "
            f"serve_torch_steps({preset!r}, {batch}, {image}, {warmup}, {flip_bn!r}, "
            f"{microbatches})")
        env = torch_child_env(malloc)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen([sys.executable, "-c", code], env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._expect("ready")

    def _expect(self, word: str) -> str:
        for line in self.proc.stdout:
            if line.startswith(word):
                return line
        raise RuntimeError(f"the PyTorch benchmark process exited ({self.proc.wait()}) "
                           "before it answered; its error is above")

    def time_steps(self, steps: int) -> float:
        self.proc.stdin.write(f"{steps}\n")
        self.proc.stdin.flush()
        return float(self._expect("seconds").split()[1])

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


class TimeLimit(Exception):
    """SIGTERM arrived: the run is out of time."""


def _raise_time_limit(signum, frame):
    raise TimeLimit


def _preset_row(args, preset: str) -> str:
    """Times `preset` on both sides; returns its RESULTS.md table row (also printed)."""
    # ferjax first, then the PyTorch process (its warm-up runs while ferjax waits);
    # then alternating rounds, so that both sides sample the same stretch of a machine
    # whose speed drifts by up to 20 % over minutes.
    time_jax, dispatch_time, compiled, flops = ferjax_stepper(
        preset, args.batch, args.image, args.dtype, args.warmup, args.flip_bn, args.augment,
        overrides={"data.host_image_size": args.host_image,
                   "train.microbatches": args.microbatches})
    child = None if args.no_torch else TorchChild(
        preset, args.batch, args.image, args.warmup, args.flip_bn, args.torch_malloc,
        args.microbatches)
    t_jax, t_torch = [], []
    try:
        for _ in range(args.rounds):
            t_jax.append(time_jax(args.steps))
            if child is not None:
                t_torch.append(child.time_steps(args.steps))
    finally:
        if child is not None:
            child.close()
    t_dispatch = dispatch_time(args.steps)
    usage = step_usage(compiled, flops, float(np.median(t_jax)), args.peak_tflops)
    del time_jax, dispatch_time, compiled
    name = f"{preset} ({args.flip_bn} BN)" if preset == "mek" else preset
    if args.augment != "preset":
        name += f", augment={args.augment}"
    if args.host_image not in (0, args.image):
        name += f", from {args.host_image} px"
    if args.microbatches > 1:
        name += f", {args.microbatches} microbatches"
    if args.torch_malloc != "default":
        name += f", PyTorch malloc={args.torch_malloc}"
    ratios = [t / j for t, j in zip(t_torch, t_jax)]
    row = (f"| {name} | {args.batch} | {args.image} | {args.dtype} | "
           f"{args.batch / np.median(t_jax):.1f} | {1e3 * t_dispatch:.1f} | {usage} | "
           + (f"{args.batch / np.median(t_torch):.1f} | {np.median(ratios):.2f} | "
              + " / ".join(f"{r:.2f}" for r in ratios) + " |" if ratios else
              "— | — | — |"))
    print(row, flush=True)
    return row


def main(argv=None) -> None:
    parser = console.command_parser("benchmarks.train_step", __doc__)
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--image", type=int, default=224)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--steps", type=int, default=5, help="timed steps a round, each side")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds, alternating ferjax and PyTorch")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed steps before the timed ones, queued like them "
                             "(default: --steps)")
    parser.add_argument("--no_torch", action="store_true")
    parser.add_argument("--flip_bn", default="joint", choices=["joint", "separate"],
                        help="mek: the two views in one 2N pass or two passes (both sides)")
    parser.add_argument("--augment", default="preset", choices=["preset", "normalize"],
                        help="ferjax's on-device augmentation: the preset's ops, or only the "
                             "normalisation (like for like with the PyTorch step)")
    parser.add_argument("--host_image", type=int, default=100,
                        help="side of the uint8 batches ferjax's step gets and resizes to "
                             "--image (100: RAF-DB's aligned faces, as configs/rafdb.py "
                             "sets; 0: --image, resized on the host)")
    parser.add_argument("--torch_malloc", default=None, choices=TORCH_MALLOCS,
                        help="the PyTorch process's malloc: glibc's default, glibc with "
                             "ferjax's settings, or tcmalloc (default: tcmalloc where this "
                             "process runs under it, else default)")
    parser.add_argument("--microbatches", type=int, default=1,
                        help="run each batch as this many parts in turn, gradients averaged "
                             "(config.train.microbatches; PyTorch: backward per part)")
    parser.add_argument("--peak_tflops", type=float, default=None,
                        help="the device's dense bf16 peak in TFLOP/s, for MFU on a device "
                             "benchmarks.common.BF16_PEAK_FLOPS does not list")
    args = parser.parse_args(argv)
    # On a GPU the PyTorch process runs while this one is alive; JAX's default 75 %
    # preallocation would leave it a quarter of the device. Read when JAX first uses it.
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.45")
    if args.warmup is None:
        args.warmup = args.steps
    if args.torch_malloc is None:
        from ferjax import malloc_tuning
        args.torch_malloc = ("tcmalloc" if malloc_tuning.preloaded_allocator() == "tcmalloc"
                             else "default")
    presets, rows, stopped = args.presets.split(","), [], ""
    # benchmarks/gpu.sh runs each part under `timeout`, whose SIGTERM ends this run: the
    # rows measured by then are still recorded, with a note.
    previous = signal.signal(signal.SIGTERM, _raise_time_limit)
    try:
        for preset in presets:
            rows.append(_preset_row(args, preset))
    except TimeLimit:
        stopped = (f" Stopped by SIGTERM (a time limit) after {len(rows)} of "
                   f"{len(presets)} presets.")
    finally:
        signal.signal(signal.SIGTERM, previous)
    if not rows:
        sys.exit("stopped by SIGTERM (a time limit) before the first preset was timed")
    header = ("| preset | batch | px | ferjax dtype | ferjax img/s | ferjax dispatch ms | "
              "ferjax TFLOP/s | MFU | step buffers GiB | device peak GiB | "
              "PyTorch img/s | ferjax/PyTorch | per round |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    append_result("Train step", machine_summary(), header, rows,
                  f"`python -m benchmarks.train_step --presets {args.presets} --batch "
                  f"{args.batch} --image {args.image} --dtype {args.dtype} --steps "
                  f"{args.steps} --rounds {args.rounds} --warmup {args.warmup} --flip_bn "
                  f"{args.flip_bn} --augment {args.augment} --host_image {args.host_image} "
                  f"--torch_malloc {args.torch_malloc}"
                  + (f" --microbatches {args.microbatches}" if args.microbatches > 1 else "")
                  + (f" --peak_tflops {args.peak_tflops:g}" if args.peak_tflops else "")
                  + f"`; ferjax's step gets uint8 batches at {args.host_image or args.image}"
                  f" px and resizes them to {args.image} on device, the PyTorch step ready "
                  f"{args.image} px tensors; {args.rounds} alternating rounds of {args.steps} "
                  f"steps a side after a compile step and {args.warmup} warm-up steps; "
                  "ferjax's steps queued, one wait a round; img/s: median over rounds; "
                  "ratio: median of the rounds' ratios; dispatch: median time for ferjax's "
                  "step call to return (the host's share); TFLOP/s: the FLOPs of the "
                  "convolutions and matrix products in the step's jaxpr (2 per multiply-add; "
                  "on CPU Winograd's, fewer than the direct form's), one device's share, "
                  "over its median time; MFU: that over the device's dense bf16 peak; step "
                  "buffers: arguments + unaliased outputs + temporaries XLA assigned to one "
                  "step; device peak: the allocator's peak "
                  "so far in this process (presets in the order given); PyTorch fp32 "
                  "eager on CPU, AMP bf16 + channels_last on CUDA, in its own process with "
                  f"{args.torch_malloc} malloc settings." + stopped)
    if stopped:
        sys.exit(stopped.strip())


if __name__ == "__main__":
    from ferjax import malloc_tuning
    print(malloc_tuning.relaunch_under_tcmalloc(), file=sys.stderr)  # as ferjax.main
    main()
