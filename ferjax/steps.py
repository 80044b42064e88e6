"""The jitted train and eval steps, and the replicated model they update.

Each step is a pure function of arrays: `make_train_step` gives a `jax.jit` over the flat
list of the model's and optimizer's arrays, `make_eval_step` one over a split model. Data
parallelism comes from shardings: the batch is split over the 'data' axis of the mesh,
the state is replicated, and XLA inserts the collectives (so BatchNorm statistics are the
global batch's). `ferjax.train` runs them in its loop; benchmarks and researchers can call
them directly.
"""

from __future__ import annotations

import dataclasses
import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from ferjax import methods
from ferjax.data import augment as augment_lib
from ferjax.models import apply_pretrained, build_model
from ferjax.models.layers import loop_body_convolutions
from ferjax.optim import make_optimizer
from ferjax.plan import Recipe

log = logging.getLogger("ferjax")


# ----------------------------------------------------------------------------- mesh

def make_mesh(devices=None) -> jax.sharding.Mesh:
    """1-D 'data' mesh over `devices` (default: every device of every process). Auto axes:
    XLA inserts the collectives the RUL batch permutation needs."""
    devices = jax.devices() if devices is None else list(devices)
    return jax.make_mesh((len(devices),), ("data",), devices=devices,
                         axis_types=(jax.sharding.AxisType.Auto,))


def to_global(batch: dict, sharding: NamedSharding) -> dict:
    """Host-local numpy batch -> global jax arrays sharded over the batch axis."""
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in batch.items()}


# ----------------------------------------------------------------------------- setup

def make_model_and_optimizer(config, num_classes: int, steps_per_epoch: int,
                             total_steps: int):
    model = build_model(config.model, num_classes=num_classes,
                        image_size=config.data.image_size,
                        rngs=nnx.Rngs(params=config.seed, dropout=config.seed + 1))
    report = apply_pretrained(model, config.model)
    if report is not None:
        log.info("pretrained weights %s:\n%s", config.model.pretrained, report)
    tx = make_optimizer(config.optim, steps_per_epoch=steps_per_epoch, total_steps=total_steps)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    return model, optimizer


def replicate(tree_owner, mesh) -> None:
    """Places every array of a module / optimizer replicated on the mesh, in place."""
    state = nnx.state(tree_owner)
    nnx.update(tree_owner, jax.device_put(state, NamedSharding(mesh, P())))


def replicated_model_and_optimizer(config, mesh, num_classes: int, steps_per_epoch: int,
                                   total_steps: int):
    """`make_model_and_optimizer` built under `mesh` with all state replicated on it."""
    with jax.set_mesh(mesh):
        model, optimizer = make_model_and_optimizer(config, num_classes, steps_per_epoch,
                                                    total_steps)
        replicate(model, mesh)
        replicate(optimizer, mesh)
    return model, optimizer


# ----------------------------------------------------------------------------- steps

def make_train_step(recipe: Recipe, model, optimizer):
    """The jitted train step, a pure function of the (model, optimizer) state:

        train_step, state, write_back = make_train_step(recipe, model, optimizer)
        state, metrics = train_step(state, batch, step, base_key, alpha, class_weights,
                                    rebalance_weights)
        write_back(state)  # before reading model or optimizer again

    It augments on device, runs forward, loss and update, and rolls the state back when the
    loss or the gradient norm is not finite. `state` is donated. It is the flat list of the
    objects' arrays, and the step a `jax.jit` over it, because every call flattens its
    arguments and rebuilds its outputs on the host before a fast accelerator step can start:
    `nnx.jit` walks the object graph in Python (9-10 ms a call), and a split nnx State
    rebuilds each of its Variables in Python (rul_cbam, about 700 of them: 11-12 ms against
    7-8 ms for the flat list; benchmarks/RESULTS.md).
    """
    graphdef, state = nnx.split((model, optimizer))
    leaves, treedef = jax.tree.flatten(state)

    def train_step(leaves, batch, step, base_key, alpha, class_weights, rebalance_weights):
        model, optimizer = nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))
        metrics = _update(recipe, model, optimizer, batch, step, base_key, alpha,
                          class_weights, rebalance_weights)
        return jax.tree.leaves(nnx.state((model, optimizer))), metrics

    def write_back(leaves) -> None:
        nnx.update((model, optimizer), jax.tree.unflatten(treedef, leaves))

    return jax.jit(train_step, donate_argnums=0), leaves, write_back


def _update(recipe: Recipe, model, optimizer, batch, step, base_key, alpha, class_weights,
            rebalance_weights) -> dict:
    """One optimizer update of `model` in place (inside jit); returns the step's metrics."""
    key = jax.random.fold_in(base_key, step)
    k_aug, k_aug_rev, k_forward, k_dropout = jax.random.split(key, 4)
    batch = dict(batch)
    batch["image"] = augment_lib.augment_batch(k_aug, batch["image"], recipe.train_ops,
                                               recipe.image_size, recipe.train_resize)
    if "image_rev" in batch:
        batch["image_rev"] = augment_lib.augment_batch(k_aug_rev, batch["image_rev"],
                                                       recipe.train_ops, recipe.image_size,
                                                       recipe.train_resize)
    nnx.reseed(model, dropout=k_dropout)
    ctx = methods.StepContext(class_weights, rebalance_weights, alpha, k_forward,
                              recipe.loss_static)
    keep = nnx.Not(nnx.RngState)
    # nnx.state holds live Variables: map it to snapshot the current array values.
    before = jax.tree.map(lambda x: x, nnx.state((model, optimizer), keep))
    if recipe.microbatches == 1:
        (loss, (terms, correct)), grads = nnx.value_and_grad(
            lambda m: _loss(recipe, m, batch, ctx), has_aux=True)(model)
    else:
        loss, terms, correct, grads = _accumulated_loss_and_grads(recipe, model, batch, ctx)
    grad_norm = optax.tree.norm(grads)
    optimizer.update(model, grads)
    # A finite gradient can still give non-finite parameters (a NaN learning rate).
    finite = (jnp.isfinite(loss) & jnp.isfinite(grad_norm)
              & jnp.isfinite(optax.tree.norm(nnx.state(model, nnx.Param))))
    after = nnx.state((model, optimizer), keep)
    nnx.update((model, optimizer),
               jax.tree.map(lambda new, old: jnp.where(finite, new, old), after, before))
    accuracy = correct / batch["label"].shape[0]
    return {"loss": loss, "train_accuracy": accuracy, "grad_norm": grad_norm,
            "finite": finite, **{f"loss/{k}": v for k, v in terms.items()}}


def _loss(recipe: Recipe, model, batch, ctx) -> tuple[jax.Array, tuple[dict, jax.Array]]:
    """The method's weighted loss of `batch` -> (loss, (terms, number of correct argmaxes))."""
    out = methods.FORWARDS.get(recipe.forward)(model, batch, ctx)
    loss, terms = methods.total_loss(out, batch, ctx, recipe.terms)
    correct = jnp.sum((jnp.argmax(out["logits"], -1) == batch["label"]).astype(jnp.float32))
    return loss, (terms, correct)


def _accumulated_loss_and_grads(recipe: Recipe, model, batch, ctx):
    """Gradient accumulation: `batch` (N samples) run as k = recipe.microbatches parts of
    N/k, one after another in a `lax.scan`, so only one part's activations are alive.

    Returns (mean loss, mean terms, correct count, mean gradient). Each part's loss is its
    own mean, as k backward passes before one PyTorch `optimizer.step()` give; BatchNorm
    normalises with each part's statistics and updates its running averages once per part;
    RUL pairs samples within a part. Part j holds samples j, j + k, j + 2k, ..., so with
    the batch sharded over devices every part is spread over all of them.
    """
    k = recipe.microbatches
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    parts = jax.tree.map(lambda x: x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1),
                         batch)

    def part_loss(params, rest, part, key):
        # Fresh Variables for `rest` (BatchNorm statistics, RNG counts): grad does not
        # re-create its non-differentiated arguments, and they are updated in its trace.
        m = nnx.merge(graphdef, params, jax.tree.map(lambda x: x, rest))
        loss, aux = _loss(recipe, m, part, dataclasses.replace(ctx, key=key))
        return loss, (aux, nnx.split(m, nnx.Param, ...)[2])

    def accumulate(carry, xs):
        rest, grad_sum = carry
        (loss, ((terms, correct), rest)), grads = jax.value_and_grad(
            part_loss, has_aux=True)(params, rest, *xs)
        return (rest, jax.tree.map(jnp.add, grad_sum, grads)), (loss, terms, correct)

    zeros = jax.tree.map(jnp.zeros_like, params)
    with loop_body_convolutions():  # XLA:CPU's convolution gradients are slow in loops
        (rest, grad_sum), (losses, terms, correct) = jax.lax.scan(
            accumulate, (rest, zeros), (parts, jax.random.split(ctx.key, k)))
    nnx.update(model, rest)
    return (jnp.mean(losses), jax.tree.map(jnp.mean, terms), jnp.sum(correct),
            jax.tree.map(lambda g: g / k, grad_sum))


def class_probabilities(model, x: jax.Array, flip_average: bool = False) -> jax.Array:
    """(N, K) softmax of the model on normalised (N, S, S, 3) images; with `flip_average`
    the mean of the image's and its mirror's (test-time flip, in one 2N batch)."""
    if not flip_average:
        return jax.nn.softmax(model(x)["logits"].astype(jnp.float32), axis=-1)
    n = x.shape[0]
    probs = jax.nn.softmax(model(jnp.concatenate([x, x[:, :, ::-1]]))["logits"].astype(
        jnp.float32), axis=-1)
    return (probs[:n] + probs[n:]) / 2


def make_eval_step(recipe: Recipe, num_classes: int):
    """Jitted: (graphdef, state, batch) -> ((K, K) confusion counts of the masked batch,
    (N, K) class probabilities), for `graphdef, state = nnx.split(model)` in eval mode;
    graphdef is static."""

    def eval_step(graphdef, state, batch):
        model = nnx.merge(graphdef, state)
        x = augment_lib.augment_batch(jax.random.key(0), batch["image"], recipe.eval_ops,
                                      recipe.image_size)
        probs = class_probabilities(model, x, recipe.eval_flip_average)
        pred = jax.nn.one_hot(jnp.argmax(probs, -1), num_classes)
        true = jax.nn.one_hot(batch["label"], num_classes) * batch["mask"][:, None]
        return (true.T @ pred).astype(jnp.int32), probs

    return jax.jit(eval_step, static_argnums=0)
