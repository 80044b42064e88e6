"""Evaluate a checkpoint on any split, or on another dataset: per-class table and
confusion-matrix picture.

    python -m ferjax.evaluate --workdir runs/rafdb_mek [--split test] [--checkpoint best]
    python -m ferjax.evaluate --workdir runs/rafdb_mek --dataset ferplus:7   # cross-dataset
    python -m ferjax.evaluate --workdir runs/mek_released --config configs/rafdb.py:mek_swin \\
        --weights mek_rafdb.pt       # a weights file alone (a released model), no training run

Writes <workdir>/eval_<split>_<checkpoint>/{per_class.txt, summary.json, confusion_matrix.png}
(eval_<dataset>_<split>_<checkpoint>/ for another dataset; <checkpoint> is
weights_<file name> for --weights).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys

import ml_collections

from ferjax import compilation_cache, console, files


def cross_dataset_config(data_cfg, dataset: str, data_dir: str | None):
    """`data_cfg` (the training run's) pointed at `dataset` ('name' or 'name:config'),
    already built under `data_dir` (default: the run's); the run's preprocessing stays."""
    from ferjax.data.builders import get_builder_class
    cfg = ml_collections.ConfigDict(data_cfg.to_dict())
    name, _, builder_config = dataset.partition(":")
    cfg.name = name
    cfg.config = builder_config or None
    cfg.fold, cfg.holdout_fraction = -1, 0.0    # the run's folds are of its own dataset
    cfg.manual_dir = ""
    cfg.auto_build = not get_builder_class(name).NEEDS_MANUAL_DIR
    if data_dir is not None:
        cfg.data_dir = data_dir
    return cfg


def matched_to_model(split, model_classes: list[str]):
    """(`split` without the images of classes the model lacks, how many those were).
    Labels are canonical (spec §5.6) in every ferjax dataset, so class k is class k; a
    7-class model evaluated on an 8-class dataset leaves out its contempt images."""
    from ferjax.data import sources
    shared = min(len(split.class_names), len(model_classes))
    if list(split.class_names[:shared]) != list(model_classes[:shared]):
        raise ValueError(f"the dataset's classes {list(split.class_names)} do not match the "
                         f"model's {model_classes}")
    keep = split.labels < len(model_classes)
    return sources.part_of(split, keep), int((~keep).sum())


def evaluate_workdir(workdir: str, split: str | None = None, which: str = "best",
                     dataset: str | None = None, data_dir: str | None = None,
                     flip_average: bool | None = None) -> dict:
    """Evaluates checkpoint `which` of `workdir` on `split` of its dataset, or of `dataset`
    (cross-dataset: default split 'test', or 'train' where there is none, as for CK+);
    writes the table, summary.json and picture, and returns the summary. `flip_average`
    overrides the run's config.eval.flip_average (test-time flip)."""
    from ferjax.workdir import restore_model

    config, model, names, step = restore_model(workdir, which)
    return evaluate_model(config, model, names, {"checkpoint_step": step},
                          f"checkpoint {which} (step {step})", workdir, which, split, dataset,
                          data_dir, flip_average)


def model_from_weights(config, weights: str):
    """(eval-mode model, class names) for `config` with every tensor read from `weights`
    (a released model, MEK's SwinTransFER file included); the dataset, built on first use,
    names the classes. Fails naming the keys if the file and the model do not match."""
    from flax import nnx

    from ferjax.data import sources
    from ferjax.models import build_model
    from ferjax.models.pretrained import load_pretrained
    from ferjax.presets import check_fields

    check_fields(config)
    # The builder's metadata names the classes; the split's records are read once, later.
    names = list(sources.prepared_builder(config.data).info.features["label"].names)
    model = build_model(config.model, num_classes=len(names),
                        image_size=config.data.image_size, rngs=nnx.Rngs(0))
    report = load_pretrained(model, weights, strict=True)
    logging.getLogger("ferjax").info("weights %s:\n%s", weights, report)
    model.eval()
    return model, names


def evaluate_weights(config, weights: str, workdir: str, split: str | None = None,
                     dataset: str | None = None, data_dir: str | None = None,
                     flip_average: bool | None = None) -> dict:
    """`evaluate_workdir` for a weights file alone: the model of `config` with the file's
    tensors; results go to `workdir`/eval_<split>_weights_<file name>/."""
    model, names = model_from_weights(config, weights)
    which = "weights_" + re.sub(r"[^\w.-]", "_", os.path.basename(weights))
    return evaluate_model(config, model, names, {"weights": weights},
                          os.path.basename(weights), workdir, which, split, dataset, data_dir,
                          flip_average)


def evaluate_model(config, model, names: list[str], origin: dict, title: str, workdir: str,
                   which: str, split: str | None, dataset: str | None, data_dir: str | None,
                   flip_average: bool | None) -> dict:
    """Evaluates an eval-mode `model` (the run's `config`, classes `names`) as
    `evaluate_workdir` describes; `origin` ({'checkpoint_step': ...} or {'weights': ...})
    goes into summary.json, `title` under the picture and `which` into the output folder's
    name."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec as P

    from ferjax import metrics, train
    from ferjax.data import sources
    from ferjax.plan import make_recipe
    from ferjax.steps import make_eval_step, make_mesh, replicate

    if flip_average is not None:
        config.eval.flip_average = flip_average
    data_cfg = ml_collections.ConfigDict(config.data.to_dict())
    left_out = 0
    field = "--split" if split else "config.data.eval_split"
    if dataset:
        data_cfg = cross_dataset_config(data_cfg, dataset, data_dir)
        builder = sources.prepared_builder(data_cfg)
        split = split or ("test" if "test" in builder.info.splits else "train")
        sources.check_eval_split(builder, data_cfg, split, field)
        eval_split, left_out = matched_to_model(sources.open_split(builder, split), names)
    else:
        split = split or config.data.eval_split
        builder = sources.prepared_builder(data_cfg)
        eval_split = sources.open_eval_split(builder, data_cfg, split, field)
    if not len(eval_split):
        raise ValueError(f"{data_cfg.name}/{split} has no image of the model's classes")
    mesh = make_mesh()
    recipe = make_recipe(config)
    with jax.set_mesh(mesh):
        replicate(model, mesh)
        cm = train.evaluate(model, make_eval_step(recipe, len(names)), eval_split, config,
                            NamedSharding(mesh, P("data")), len(names), f"{data_cfg.name}/{split}")
    summary = metrics.accuracy_summary(cm)
    table = metrics.per_class_table(summary, names)
    source = f"{dataset.replace(':', '_')}_" if dataset else ""
    tta = "_flip" if config.eval.flip_average else ""
    out_dir = files.join(workdir, f"eval_{source}{split}_{which}{tta}")
    files.makedirs(out_dir)
    files.write_text(files.join(out_dir, "per_class.txt"), table + "\n")
    result = {**origin, "dataset": data_cfg.name, "split": split,
              "left_out_images": left_out, "flip_average": bool(config.eval.flip_average),
              **metrics.headline(summary),
              "per_class_accuracy": metrics.by_class(names, summary["per_class_accuracy"]),
              "per_class_f1": metrics.by_class(names, summary["per_class_f1"]),
              "confusion_matrix": cm.tolist(), "output_dir": out_dir}
    files.write_text(files.join(out_dir, "summary.json"), json.dumps(result, indent=2))
    metrics.save_confusion_png(cm, names, files.join(out_dir, "confusion_matrix.png"),
                               f"{data_cfg.name}/{split}, {title}")
    result["table"] = table
    return result


def main(argv=None) -> int:
    parser = console.command_parser("ferjax.evaluate", __doc__)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--split", default=None, help="default: the config's eval split; "
                        "with --dataset, 'test' ('train' where there is none, as in CK+)")
    parser.add_argument("--checkpoint", default=None,
                        help="'best' (the default), 'latest' or a step")
    parser.add_argument("--dataset", default=None,
                        help="evaluate on another built dataset, 'name' or 'name:config' "
                             "(cross-dataset; classes matched by canonical label)")
    parser.add_argument("--data_dir", default=None,
                        help="with --dataset: where it was built (default: the run's)")
    parser.add_argument("--flip_average", action=argparse.BooleanOptionalAction, default=None,
                        help="average each image's class probabilities with its mirror's "
                             "(default: the run's config.eval.flip_average)")
    parser.add_argument("--weights", default=None,
                        help="evaluate this weights file (.pth/.pt/.npz/.safetensors, e.g. a "
                             "released model) instead of a checkpoint of --workdir, which "
                             "then only receives the results; needs --config")
    parser.add_argument("--config", default=None,
                        help="with --weights: the config file[:args] of the model and dataset, "
                             "e.g. configs/rafdb.py:mek_swin")
    parser.add_argument("--compilation_cache", default=compilation_cache.default_folder(),
                        help=compilation_cache.HELP)
    args = parser.parse_args(argv)
    if (args.weights is None) != (args.config is None):
        parser.error("--weights and --config go together")
    if args.weights and args.checkpoint:
        parser.error("--checkpoint picks a checkpoint of --workdir; --weights evaluates a file")
    compilation_cache.use(args.compilation_cache)
    # ferjax's own notes (a first-use dataset build, a long pass's progress) but not the
    # libraries' INFO chatter.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    logging.getLogger("ferjax").setLevel(logging.INFO)
    try:
        if args.weights:
            from ferjax.presets import load_config_file
            path, _, config_arg = args.config.partition(":")
            if not os.path.isfile(path):
                raise FileNotFoundError(f"--config: no config file {path}")
            result = evaluate_weights(load_config_file(path, config_arg or None), args.weights,
                                      args.workdir, args.split, args.dataset, args.data_dir,
                                      args.flip_average)
        else:
            result = evaluate_workdir(args.workdir, args.split, args.checkpoint or "best",
                                      args.dataset, args.data_dir, args.flip_average)
    except (FileNotFoundError, ValueError, KeyError) as e:
        console.print_error(e)
        return 1
    print(result["table"])
    if result["left_out_images"]:
        print(f"left out {result['left_out_images']} images of classes the model does not "
              f"have")
    print(f"wrote {result['output_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
