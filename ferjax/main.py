"""Train a config and evaluate it as it trains; the same command again resumes the run.

    python -m ferjax.main --config configs/synthetic.py --workdir runs/synthetic
    python -m ferjax.main --config configs/rafdb.py:mek --workdir runs/rafdb_mek
    python -m ferjax.main --config configs/rafdb.py:mek --workdir runs/rafdb_mek --dry_run
    python -m ferjax.main ... --config.train.batch_size=128   # any config field

--config is configs/<dataset>.py[:<preset>[,<arg>=<value>]], presets baseline, rul_cbam,
mek, mek_claimed, mek_swin and rlrcnet; every field, with its meaning, is in
ferjax/presets.py. The workdir gets checkpoints, metrics.jsonl, TensorBoard files,
summary.json and confusion_matrix.png (README: "What a run writes").

This entry point is kept thin: the loop is `ferjax.train.train_and_evaluate(config,
workdir)` and its jitted steps are in `ferjax.steps`, for notebooks and tests to call.
"""

from __future__ import annotations

import json
import logging
import sys

from absl import app, flags
from ml_collections import config_flags

from ferjax import compilation_cache, console

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "config file, optionally with ':args'",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "where checkpoints, metrics and pictures go")
flags.DEFINE_string("coordinator_address", None, "multi-process: host:port of process 0")
flags.DEFINE_integer("num_processes", None, "multi-process: number of processes")
flags.DEFINE_integer("process_id", None, "multi-process: index of this process")
flags.DEFINE_bool("distributed", False, "call jax.distributed.initialize() with cluster "
                  "auto-detection (Cloud TPU pods, SLURM, ...)")
flags.DEFINE_string("compilation_cache", compilation_cache.default_folder(),
                    compilation_cache.HELP)
flags.DEFINE_bool("dry_run", False, "check the config and the data, print what the run "
                  "would do (class counts, model size, loss, length) and exit without training")
flags.mark_flags_as_required(["config", "workdir"])

# What `malloc_tuning.relaunch_under_tcmalloc` found, logged with the devices.
MALLOC_NOTE = "malloc: not checked (ferjax.main imported, not run)"


def _not_a_missing_libtpu(record: logging.LogRecord) -> bool:
    """Drops JAX's "Unable to initialize backend 'tpu' ... libtpu.so: cannot open shared
    object file", logged at every start on a machine without the TPU runtime (CPU or GPU),
    where it reads like an error. A TPU runtime that is installed but fails still shows."""
    message = record.getMessage()
    return not (message.startswith("Unable to initialize backend 'tpu'")
                and "cannot open shared object file" in message)


def init_distributed() -> None:
    import jax
    if FLAGS.coordinator_address:
        if jax.config.jax_platforms in (None, "", "cpu") or "cpu" in str(jax.config.jax_platforms):
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                                   FLAGS.process_id)
    elif FLAGS.distributed:
        jax.distributed.initialize()


def unknown_field(config, dotted: str) -> str | None:
    """Why override `dotted` ('train.batch_sise') names no field of `config`, or None."""
    node, parts = config, dotted.split(".")
    for i, part in enumerate(parts):
        if not hasattr(node, "keys") or part not in node.keys():
            owner = ".".join(["config", *parts[:i]])
            fields = f"; its fields: {', '.join(sorted(node.keys()))}" if hasattr(node, "keys") \
                else f": it is a value ({type(node).__name__}), not a group of fields"
            return f"{owner} has no field {part!r}{fields}"
        node = node[part]
    return None


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with one-line errors for what ml_collections reports as a
    traceback: a config file that cannot be loaded, an error in its `get_config` (a config
    argument it does not take, say) and an override of a field the config lacks."""
    try:
        rest = FLAGS(argv)
        if FLAGS["config"].value is not None:
            FLAGS.config.keys()  # a config file that failed to load raises only when read
        return rest
    except OSError as e:
        sys.exit(f"error: --config={_config_spec(argv)}: {str(e).strip().splitlines()[-1].strip()}")
    except flags.Error as e:
        message = str(e).strip()
        if "Error whilst parsing config file" in message:
            sys.exit(f"error: --config={_config_spec(argv)}: {message.splitlines()[-1].strip()}")
        sys.exit(f"FATAL Flags parsing error: {message}\n"
                 "Pass --helpshort or --helpfull to see help on flags.")
    except (AttributeError, KeyError):
        from ferjax.presets import load_config_file
        path, _, arg = (_config_spec(argv) or "").partition(":")
        config = load_config_file(path, arg or None)
        for name in (a.split("=", 1)[0] for a in argv if a.startswith("--config.")):
            reason = unknown_field(config, name[len("--config."):])
            if reason:
                sys.exit(f"error: {name}: {reason}")
        raise


def _config_spec(argv: list[str]) -> str | None:
    """The value of --config in argv ('path[:arg]'), given as '--config X' or '--config=X'."""
    return next((b for a, b in zip(argv, argv[1:]) if a == "--config"), None) or next(
        (a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)


def main(argv) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)
    logging.getLogger("jax._src.xla_bridge").addFilter(_not_a_missing_libtpu)
    init_distributed()
    import jax

    from ferjax import train
    cache_note = compilation_cache.use(FLAGS.compilation_cache)
    logging.getLogger("ferjax").info("process %d of %d, devices: %s; %s; %s",
                                     jax.process_index(), jax.process_count(), jax.devices(),
                                     MALLOC_NOTE, cache_note)
    try:
        if FLAGS.dry_run:
            from ferjax import plan
            if jax.process_index() == 0:
                print(plan.describe_plan(FLAGS.config, plan.make_plan(FLAGS.config),
                                         FLAGS.workdir))
            return 0
        result = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except (train.NonFiniteLossError, FileNotFoundError, ValueError, KeyError) as e:
        console.print_error(e)
        return 1
    if jax.process_index() == 0:
        brief = {k: result[k] for k in ("step", "accuracy", "mean_class_accuracy", "workdir")
                 if k in result}
        print(json.dumps(brief, indent=2))
    return 0


if __name__ == "__main__":
    from ferjax import malloc_tuning
    MALLOC_NOTE = malloc_tuning.relaunch_under_tcmalloc()  # may re-execute this command
    app.run(lambda argv: sys.exit(main(argv)), flags_parser=parse_flags)
