"""End-to-end epoch time: one epoch of a preset on the RAF-DB-sized synthetic set
(12,271 training images), data pipeline, augmentation, steps and evaluation included.

    python -m benchmarks.epoch --preset mek --image 224 --batch 64

The first epoch includes compilation; the time of a second epoch (resumed from the first
one's checkpoint, compile cache cold) is reported separately as the steady state, with the
compile time it needed. Results are appended to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import json
import pathlib
import sys
import tempfile
import time

from benchmarks.common import append_result, machine_summary
from ferjax import console

ROOT = pathlib.Path(__file__).resolve().parents[1]


def main(argv=None) -> None:
    parser = console.command_parser("benchmarks.epoch", __doc__)
    parser.add_argument("--preset", default="mek")
    parser.add_argument("--image", type=int, default=224)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--host_image", type=int, default=100,
                        help="side the host pipeline batches at (100: the images' own side, "
                             "resized to --image on device, as configs/rafdb.py; 0: --image, "
                             "resized on the host)")
    parser.add_argument("--data_dir", default=None)
    args = parser.parse_args(argv)

    from absl import flags
    flags.FLAGS.mark_as_parsed()
    from ferjax import train

    from ferjax.presets import load_config_file
    config = load_config_file(ROOT / "configs" / "synthetic.py", args.preset)
    config.data.config = "rafdb_size"
    config.data.image_size = args.image
    config.data.host_image_size = args.host_image
    config.data.num_workers = args.workers
    config.model.width = 64
    config.model.width_mult = 1.0
    config.model.dtype = args.dtype
    config.train.batch_size = args.batch
    config.train.progress_bar = False
    with tempfile.TemporaryDirectory() as tmp:
        config.data.data_dir = args.data_dir or str(pathlib.Path(tmp) / "data")
        from ferjax.data import sources
        sources.prepared_builder(config.data)  # build outside the timed region
        steps = 12271 // args.batch
        workdir = pathlib.Path(tmp) / "run"
        times = []
        for epoch in (1, 2):
            config.train.num_steps = epoch * steps
            start = time.perf_counter()
            result = train.train_and_evaluate(config, str(workdir))
            times.append(time.perf_counter() - start)
            print(json.dumps({"epoch": epoch, "seconds": times[-1],
                              "mean_class_accuracy": result["mean_class_accuracy"]["last"]}))
        seconds, waited, timed_steps = steady_windows(workdir / "metrics.jsonl",
                                                      after_step=steps)
    wait, steady = waited / seconds, steps * seconds / timed_steps
    px = (f"{args.image}" if args.host_image in (0, args.image)
          else f"{args.image} (host {args.host_image})")
    row = (f"| {args.preset} | {px} | {args.batch} | {args.dtype} | {steps} | "
           f"{times[0]:.1f} | {times[1]:.1f} | {steady:.1f} | {100 * wait:.1f} |")
    append_result("Epoch on RAF-DB-sized synthetic (12,271 images)", machine_summary(),
                  "| preset | px | batch | dtype | steps | epoch 1 s (with compile) | "
                  "epoch 2 s (resumed) | epoch 2 training s, steady | "
                  "input wait % (epoch 2) |\n"
                  "|---|---|---|---|---|---|---|---|---|", [row],
                  f"`python -m benchmarks.epoch --preset {args.preset} --image {args.image} "
                  f"--batch {args.batch} --dtype {args.dtype} --host_image "
                  f"{args.host_image}`; wall time of "
                  "train_and_evaluate for one epoch including evaluation on 3,067 test "
                  "images; epoch 2 restarts the process state (restore + compile) as a "
                  "resumed run does; steady: epoch 2's steps at the rate of its log "
                  "windows after the first (which holds the compilation), evaluation "
                  "excluded; input wait: the share of that time the "
                  "loop spent waiting for batches (train/input_wait_fraction), an upper "
                  "bound on the device's idle time for want of input.")


def steady_windows(metrics_jsonl: pathlib.Path, after_step: int) -> tuple[float, float, int]:
    """(seconds, seconds waiting for input, steps) of the training log windows after
    `after_step`, leaving out the first of them, which holds a resumed run's compilation.
    A window's seconds are its steps over its train/steps_per_second."""
    rows = [json.loads(line) for line in metrics_jsonl.read_text().splitlines()]
    rows = [r for r in rows if "train/input_wait_fraction" in r]
    waited = seconds = 0.0
    steps = previous_step = 0
    for r in rows:
        if previous_step > after_step:
            window = (r["step"] - previous_step) / r["train/steps_per_second"]
            waited += window * r["train/input_wait_fraction"]
            seconds += window
            steps += r["step"] - previous_step
        previous_step = r["step"]
    if not seconds:
        raise ValueError(f"{metrics_jsonl} has no train/input_wait_fraction after step "
                         f"{after_step}")
    return seconds, waited, steps


if __name__ == "__main__":
    from ferjax import malloc_tuning
    print(malloc_tuning.relaunch_under_tcmalloc(), file=sys.stderr)  # as ferjax.main
    main()
