"""A config resolved against the data and the devices, before anything compiles.

`make_plan` checks every part of a config (fields, registered parts, samplers, batch sizes,
split names), opens the dataset (building it on first use) and works out what trains on
what for how long; `train.train_and_evaluate` runs a plan, and `describe_plan` prints it
(`python -m ferjax.main ... --dry_run`), so a config can be checked before a long job.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from ferjax import files, methods, run_records
from ferjax.data import augment as augment_lib
from ferjax.data import pipeline, sources
from ferjax.losses import class_weights as class_weights_fn
from ferjax.losses import rebalancing_weights
from ferjax.losses.bbn import ALPHA_RULES
from ferjax.losses.classification import CLASS_WEIGHT_SCHEMES, REDUCTIONS
from ferjax.models import DEFAULT_HEAD, build_model, count_params, layers, mirror_aligned
from ferjax.optim import OPTIMIZERS, SCHEDULES
from ferjax.presets import check_fields

log = logging.getLogger("ferjax")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """The static description of a training step, read from the config once."""
    forward: str
    terms: tuple            # ((term name, weight), ...)
    train_ops: tuple        # augmentation ops (name, params)
    eval_ops: tuple
    eval_flip_average: bool  # average each eval image's class probabilities with its mirror's
    loss_static: dict       # scalars the terms read (class_weight, epsilons, ...)
    needs_second_stream: bool
    image_size: int         # the model's input side; batches from the host are resized to it
    train_resize: str       # the training images' resize method (eval: bilinear)
    microbatches: int       # parts of a batch run one after another (gradient accumulation)


# Fields that take one of a fixed set of values. They are checked with the recipe, naming
# the key, so that a bad value fails the dry run too, not the first traced step (or, in a
# field the method does not use, no step at all).
CHOICES = {"optim.name": OPTIMIZERS, "optim.schedule": SCHEDULES,
           "loss.class_weight": CLASS_WEIGHT_SCHEMES, "loss.class_weight_reduction": REDUCTIONS,
           "loss.bbn_alpha_rule": ALPHA_RULES, "data.train_resize": augment_lib.RESIZE_METHODS,
           "model.dtype": layers.DTYPES, "model.activation": (None, *layers.ACTIVATIONS),
           "augment.erase.fill": augment_lib.ERASE_FILLS}


def check_choices(config) -> None:
    """Raises naming the first CHOICES field of `config` set to a value it does not take."""
    for dotted, allowed in CHOICES.items():
        node = config
        for part in dotted.split("."):
            if not hasattr(node, "get"):
                break
            node = node.get(part, allowed[0])  # a field an old workdir lacks: its default
        if node not in allowed:
            raise ValueError(f"config.{dotted}={node!r}; expected one of {allowed}")


def make_recipe(config) -> Recipe:
    loss = config.loss
    methods.check_recipe(loss)
    check_choices(config)
    eval_ops = augment_lib.parse_ops(ml_collections.ConfigDict(
        {"ops": ("normalize",), "normalize": config.augment.normalize}))
    static = {"class_weight": loss.class_weight,
              "class_weight_reduction": loss.class_weight_reduction,
              "label_smoothing": loss.label_smoothing, "rsl_epsilon": loss.rsl_epsilon,
              "flip_bn": loss.flip_bn, "mix_group_size": int(loss.mix_group_size)}
    microbatches = int(config.train.microbatches)
    if microbatches < 1 or config.train.batch_size % microbatches:
        raise ValueError(f"config.train.microbatches={config.train.microbatches} must be >= 1 "
                         f"and divide config.train.batch_size={config.train.batch_size}")
    part = config.train.batch_size // microbatches
    if loss.forward == "uncertainty_mix" and loss.mix_group_size > 0 and (
            part % loss.mix_group_size):
        raise ValueError(f"config.loss.mix_group_size={loss.mix_group_size} does not divide "
                         f"config.train.batch_size={config.train.batch_size}"
                         + (f" / config.train.microbatches={microbatches} = {part} (RUL "
                            "pairs samples within a part)" if microbatches > 1 else ""))
    host_image_size(config.data)  # fail early on a bad value
    samplers = ("sampler", "second_sampler") if loss.forward == "dual_branch" else ("sampler",)
    for key in samplers:
        if config.data[key] not in pipeline.SAMPLERS:
            raise KeyError(f"config.data.{key}={config.data[key]!r}; registered samplers: "
                           f"{pipeline.SAMPLERS.names()}")
    return Recipe(loss.forward, tuple((k, float(v)) for k, v in loss.terms.items()),
                  augment_lib.parse_ops(config.augment), eval_ops,
                  bool(config.eval.flip_average), static,
                  loss.forward == "dual_branch", int(config.data.image_size),
                  config.data.train_resize, microbatches)


def host_image_size(data_cfg) -> int:
    """The side of the batches the host pipeline delivers: config.data.host_image_size, or
    config.data.image_size when that is 0. The step resizes them to image_size on device."""
    def pixels(value, least: int) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= least

    image, host = data_cfg.image_size, data_cfg.host_image_size
    if not pixels(image, 1):
        raise ValueError(f"config.data.image_size={image!r}; expected a positive number of "
                         "pixels")
    if not pixels(host, 0):
        raise ValueError(f"config.data.host_image_size={host!r}; expected a positive number "
                         "of pixels (or 0: image_size)")
    return host or image


def warn_if_flip_consistency_unattainable(config) -> None:
    """Logs a warning when 'flip_pair' runs at an input side where the CAMs of an image and
    its mirror cannot agree: the model's feature grids of the two are offset
    (`models.mirror_aligned`)."""
    side = config.data.image_size
    if config.loss.forward == "flip_pair" and not mirror_aligned(config.model.name, side):
        log.warning("config.data.image_size=%d: with config.loss.forward='flip_pair' the CAMs "
                    "of an image and its mirror sit on offset grids and cannot agree exactly; "
                    "sides 32m + 1 (e.g. %d) make attention consistency attainable (the "
                    "papers' code ran at 224, where the same holds)",
                    side, 32 * max(1, round((side - 1) / 32)) + 1)


def loss_weight_vectors(class_counts, num_classes: int, scheme: str
                        ) -> tuple[np.ndarray, np.ndarray]:
    """(K,) class weights of `scheme` (config.loss.class_weight) and (K,) MEK re-balancing
    weights from the training class counts; classes absent from training (neutral in
    CK+'s 7-class set) get weight 0 in both."""
    counts = np.zeros(num_classes, np.int64)
    counts[:len(class_counts)] = class_counts
    present = counts > 0
    weights = np.zeros(num_classes, np.float32)
    weights[present] = class_weights_fn(counts[present], scheme)
    rebalance = np.zeros(num_classes, np.float32)
    rebalance[present] = rebalancing_weights(counts[present])
    return weights, rebalance


def named_eval_splits(config) -> tuple[Any, tuple[str, ...], dict]:
    """(builder or None, the names of config.eval.final_splits, {name: opened split} of
    config.eval.track_splits). A wrong name fails here, before any training."""
    names = {field: tuple(s.strip() for s in config.eval[field].split(",") if s.strip())
             for field in ("final_splits", "track_splits")}
    if not any(names.values()):
        return None, (), {}
    builder = sources.prepared_builder(config.data)
    for field, splits in names.items():
        for split in splits:
            sources.check_eval_split(builder, config.data, split, f"config.eval.{field}")
    if config.data.eval_split in names["track_splits"]:
        raise ValueError(f"config.eval.track_splits has {config.data.eval_split!r}, which is "
                         f"config.data.eval_split and so evaluated every time already")
    tracked = {split: sources.open_eval_split(builder, config.data, split)
               for split in names["track_splits"]}
    return builder, names["final_splits"], tracked


@dataclasses.dataclass
class Plan:
    """A config resolved against the data and the devices, before anything compiles: what
    trains on what, for how long, evaluated on what (`make_plan`)."""
    recipe: Recipe
    train_split: sources.Split
    eval_split: sources.Split
    builder: Any                 # the dataset builder when final / tracked splits need it
    final_splits: tuple          # config.eval.final_splits names
    tracked: dict                # config.eval.track_splits: {name: opened split}
    train_data: Any              # pipeline.TrainData
    total_steps: int
    eval_every: int
    ckpt_every: int
    class_weights: np.ndarray    # (K,) config.loss.class_weight of the training counts
    rebalance_weights: np.ndarray  # (K,) MEK's N / (10 n_k)

    @property
    def steps_per_epoch(self) -> int:
        return self.train_data.steps_per_epoch

    @property
    def total_epochs(self) -> int:
        return math.ceil(self.total_steps / self.steps_per_epoch)


def make_plan(config: ml_collections.ConfigDict) -> Plan:
    """Checks `config` (fields, parts, batch sizes, split names), opens the dataset (building
    it on first use) and works out the run's length. Every config error fails here."""
    check_fields(config)
    recipe = make_recipe(config)
    warn_if_flip_consistency_unattainable(config)
    _check_batches_divide_over_devices(config, recipe.microbatches)
    train_split, eval_split = sources.open_train_and_eval(config.data)
    builder, final_splits, tracked = named_eval_splits(config)
    train_data = pipeline.train_dataset(
        train_split.source, train_split.labels, global_batch_size=config.train.batch_size,
        image_size=host_image_size(config.data), sampler=config.data.sampler,
        second_sampler=config.data.second_sampler if recipe.needs_second_stream else None,
        seed=config.seed, num_workers=config.data.num_workers,
        process_index=jax.process_index(), process_count=jax.process_count(),
        resize_method=recipe.train_resize)
    steps_per_epoch = train_data.steps_per_epoch
    total_steps = (config.train.num_steps if config.train.num_steps > 0
                   else config.train.epochs * steps_per_epoch)
    eval_every = config.train.eval_every_steps if config.train.eval_every_steps > 0 \
        else steps_per_epoch
    ckpt_every = config.train.checkpoint_every_steps if config.train.checkpoint_every_steps > 0 \
        else eval_every
    weights, rebalance = loss_weight_vectors(train_data.class_counts, train_split.num_classes,
                                             config.loss.class_weight)
    return Plan(recipe, train_split, eval_split, builder, final_splits, tracked, train_data,
                total_steps, eval_every, ckpt_every, weights, rebalance)


def _check_batches_divide_over_devices(config, microbatches: int) -> None:
    """The train and eval batches, and each microbatch, are split evenly over all devices."""
    devices = jax.device_count()
    for group in ("train", "eval"):
        if config[group].batch_size % devices:
            raise ValueError(f"config.{group}.batch_size={config[group].batch_size} does not "
                             f"divide over {devices} devices")
    if microbatches > 1 and config.train.batch_size // microbatches % devices:
        raise ValueError(f"config.train.batch_size={config.train.batch_size} in "
                         f"config.train.microbatches={microbatches} parts does not "
                         f"divide over {devices} devices: each part is spread over all of them")


def _counts(names, labels: np.ndarray) -> str:
    counts = np.bincount(labels, minlength=len(names))
    return " ".join(f"{n}={c}" for n, c in zip(names, counts))


def latest_checkpoint_step(workdir: str) -> int | None:
    """The newest step under workdir/checkpoints, read from the folder names only."""
    steps = [int(n) for n in files.listdir(files.join(workdir, "checkpoints")) if n.isdigit()]
    return max(steps, default=None)


def describe_plan(config: ml_collections.ConfigDict, plan: Plan, workdir: str = "") -> str:
    """What a run of `config` would do, in readable lines: data and class counts after the
    noise and imbalance protocols, model size, loss, optimizer, length and evaluation."""
    names = plan.train_split.class_names
    d, m, lo, o, t = config.data, config.model, config.loss, config.optim, config.train
    model = nnx.eval_shape(lambda: build_model(m, num_classes=len(names),
                                               image_size=d.image_size, rngs=nnx.Rngs(0)))
    protocols = [f"{f}={d[f]}" for f in sources.PROTOCOL_FIELDS if d.get(f, None)]
    lines = [
        f"method {config.method}: dataset {d.name}{'/' + d.config if d.config else ''}, "
        f"{len(names)} classes ({', '.join(names)})",
        f"train: split {d.train_split!r}, {len(plan.train_split)} images"
        + (f" after {', '.join(protocols)}" if protocols else "") + f"; sampler {d.sampler}"
        + (f" + {d.second_sampler}" if plan.recipe.needs_second_stream else ""),
        f"  {_counts(names, plan.train_split.labels)}",
        f"eval: split {d.eval_split!r}, {len(plan.eval_split)} images, every "
        f"{plan.eval_every} steps (best/ chosen on it by mean class accuracy)",
        f"  {_counts(names, plan.eval_split.labels)}"]
    if plan.tracked:
        lines.append("tracked at every evaluation: " + ", ".join(
            f"{s} ({len(split)} images)" for s, split in plan.tracked.items()))
    if plan.final_splits:
        lines.append(f"after training, last and best model on: {', '.join(plan.final_splits)}")
    lines += [
        f"model: {m.name}, head {m.head or DEFAULT_HEAD.get(m.name, 'linear')}, "
        f"{count_params(model):,} parameters, "
        f"{m.dtype}, input {d.image_size} px (host batches {host_image_size(d)} px)"
        + (f", weights from {m.pretrained}" if m.pretrained else ""),
        f"loss: forward {lo.forward}; " + " + ".join(
            f"{w:g}·{name}" for name, w in plan.recipe.terms)
        + (f"; class weights {lo.class_weight}: " + " ".join(
            f"{w:.3g}" for w in plan.class_weights) if lo.class_weight != "none" else "")
        + ("; MEK weights N/(10 n_k): " + " ".join(f"{w:.3g}" for w in plan.rebalance_weights)
           if {"rsl", "rac"} & {name for name, _ in plan.recipe.terms} else ""),
        "augment (on device): " + (f"{plan.recipe.train_resize} resize to {d.image_size} px, "
                                   if host_image_size(d) != d.image_size else "")
        + ", ".join(name for name, _ in plan.recipe.train_ops),
        f"optimizer: {o.name}, lr {o.lr:g} ({o.schedule}), weight decay {o.weight_decay:g}"
        + (f", classifier lr x{o.classifier_lr_multiplier:g}"
           if o.classifier_lr_multiplier != 1 else ""),
        f"length: {plan.total_steps} steps = {plan.total_steps / plan.steps_per_epoch:g} "
        f"epochs of {plan.steps_per_epoch} steps; batch {t.batch_size} over "
        f"{jax.device_count()} device(s) in {jax.process_count()} process(es)"
        + (f", run as {t.microbatches} parts of {t.batch_size // t.microbatches} in turn "
           "(gradients averaged)" if t.microbatches > 1 else "") + "; checkpoint "
        f"every {plan.ckpt_every} steps" + (f"; early stop after {t.early_stop_patience} "
                                             "evaluations without a new best"
                                             if t.early_stop_patience else "")]
    if workdir:
        step = latest_checkpoint_step(workdir)
        lines.append(f"workdir {workdir}: " + (
            "new run" if step is None else f"would resume from its checkpoint at step {step}"
            + (" (nothing left to train)" if step >= plan.total_steps else "")))
        if step is not None and files.exists(files.join(workdir, "config.json")):
            changes = run_records.changes_since_saved(config, workdir)
            lines += [f"  config changes against its config.json: {len(changes)}"] + [
                f"    {c}" for c in changes]
    return "\n".join(lines)
