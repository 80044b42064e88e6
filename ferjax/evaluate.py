"""Evaluate a checkpoint on any split: per-class table and confusion-matrix picture.

    python -m ferjax.evaluate --workdir runs/rafdb_mek [--split test] [--checkpoint best]

Writes <workdir>/eval_<split>_<checkpoint>/{per_class.txt, summary.json, confusion_matrix.png}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import ml_collections

from ferjax import compilation_cache


def evaluate_workdir(workdir: str, split: str | None = None, which: str = "best") -> dict:
    import jax
    from jax.sharding import NamedSharding, PartitionSpec as P

    from ferjax import metrics, train
    from ferjax.data import sources
    from ferjax.workdir import restore_model

    config, model, names, step = restore_model(workdir, which)
    split = split or config.data.eval_split
    data_cfg = ml_collections.ConfigDict(config.data.to_dict())
    builder = sources.prepared_builder(data_cfg)
    eval_split = sources.open_eval_split(builder, data_cfg, split)
    mesh = train.make_mesh()
    recipe = train.make_recipe(config)
    with jax.set_mesh(mesh):
        train.replicate(model, mesh)
        cm = train.evaluate(model, train.make_eval_step(recipe, len(names)), eval_split, config,
                            NamedSharding(mesh, P("data")), len(names))
    summary = metrics.accuracy_summary(cm)
    table = metrics.per_class_table(summary, names)
    out_dir = os.path.join(workdir, f"eval_{split}_{which}")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "per_class.txt"), "w") as f:
        f.write(table + "\n")
    result = {"checkpoint_step": step, "split": split, "accuracy": summary["accuracy"],
              "mean_class_accuracy": summary["mean_class_accuracy"],
              "macro_f1": summary["macro_f1"],
              "per_class_accuracy": metrics.by_class(names, summary["per_class_accuracy"]),
              "per_class_f1": metrics.by_class(names, summary["per_class_f1"]),
              "confusion_matrix": cm.tolist(), "output_dir": out_dir}
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(result, f, indent=2)
    metrics.save_confusion_png(cm, names, os.path.join(out_dir, "confusion_matrix.png"),
                               f"{config.data.name}/{split}, checkpoint {which} (step {step})")
    result["table"] = table
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--split", default=None, help="default: the config's eval split")
    parser.add_argument("--checkpoint", default="best", help="'best', 'latest' or a step")
    parser.add_argument("--compilation_cache", default=compilation_cache.default_folder(),
                        help=compilation_cache.HELP)
    args = parser.parse_args(argv)
    compilation_cache.use(args.compilation_cache)
    try:
        result = evaluate_workdir(args.workdir, args.split, args.checkpoint)
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(result["table"])
    print(f"wrote {result['output_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
