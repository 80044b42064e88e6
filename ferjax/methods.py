"""The parts a method is made of: a training *forward* and weighted loss *terms*.

A method preset (`ferjax/presets.py`) is only configuration:
`config.loss.forward` names how the model is run on a training batch, and
`config.loss.terms` maps loss-term names to their weights. Adding a method means
registering a small forward or term here, never branching in the training loop.

Forwards: (model, batch, ctx) -> outputs dict with at least 'logits' (N, K) for the
N labelled images of the batch. Terms: (outputs, batch, ctx) -> scalar.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from ferjax import losses as L
from ferjax.registry import Registry


@dataclasses.dataclass(frozen=True)
class StepContext:
    """Per-step inputs to forwards and terms (arrays are traced inside the jitted step).

    class_weights: (K,) loss weights of config.loss.class_weight (ones when 'none').
    rebalance_weights: (K,) MEK weights N/(10 n_k) of the training counts.
    alpha: BBN cumulative-learning α for the current epoch.
    key: randomness for the forward (RUL pairing).
    """
    class_weights: jax.Array
    rebalance_weights: jax.Array
    alpha: jax.Array
    key: jax.Array
    loss_cfg: Any  # static: the loss config (hashable view)


Forward = Callable[[Any, dict, StepContext], dict]
Term = Callable[[dict, dict, StepContext], jax.Array]
FORWARDS: Registry[Forward] = Registry("forward")
TERMS: Registry[Term] = Registry("loss term")


# ------------------------------------------------------------------------------ forwards

@FORWARDS.register("single")
def forward_single(model, batch, ctx):
    """One pass over the augmented images."""
    return model(batch["image"])


FLIP_BN_MODES = ("joint", "separate")


@FORWARDS.register("flip_pair")
def forward_flip_pair(model, batch, ctx):
    """EAC / MEK: the image and its mirror; returns both CAMs; the mirror's logits are unused.

    config.loss.flip_bn (spec §7.7): 'joint' runs one concatenated pass (BatchNorm statistics
    over both views); 'separate' runs two passes like the reference code (statistics per
    view, running averages updated twice), which is also faster on CPU at 224 px, where a
    batch of 2N costs more than twice a batch of N (benchmarks/RESULTS.md).
    """
    x = batch["image"]
    mirrored = x[:, :, ::-1, :]
    if ctx.loss_cfg["flip_bn"] == "separate":
        out = model(x, return_cam=True)
        return {"logits": out["logits"], "cam": out["cam"],
                "cam_flipped": model(mirrored, return_cam=True)["cam"]}
    n = x.shape[0]
    out = model(jnp.concatenate([x, mirrored]), return_cam=True)
    return {"logits": out["logits"][:n], "cam": out["cam"][:n], "cam_flipped": out["cam"][n:]}


@FORWARDS.register("uncertainty_mix")
def forward_uncertainty_mix(model, batch, ctx):
    """RUL: one random pairing per step, features mixed by relative uncertainty;
    config.loss.mix_group_size > 0 pairs within consecutive groups (per-GPU batches)."""
    perm = L.sample_permutation(ctx.key, batch["image"].shape[0],
                                ctx.loss_cfg["mix_group_size"])
    return {**model(batch["image"], mix_perm=perm), "mix_perm": perm}


@FORWARDS.register("dual_branch")
def forward_dual_branch(model, batch, ctx):
    """BBN / RLR-CNet: uniform and reversed batches through the shared trunk together."""
    x = jnp.concatenate([batch["image"], batch["image_rev"]])
    return model(x, alpha=ctx.alpha, split_batch=True)


# ------------------------------------------------------------------------------ terms

def _weights(ctx):
    return None if ctx.loss_cfg["class_weight"] == "none" else ctx.class_weights


@TERMS.register("ce")
def term_cross_entropy(out, batch, ctx):
    """Cross-entropy, class-weighted when config.loss.class_weight is not 'none'."""
    return L.weighted_cross_entropy(out["logits"], batch["label"], _weights(ctx),
                                    ctx.loss_cfg["class_weight_reduction"])


@TERMS.register("label_smoothing")
def term_label_smoothing(out, batch, ctx):
    return L.label_smoothing_loss(out["logits"], batch["label"],
                                  ctx.loss_cfg["label_smoothing"])


@TERMS.register("rsl")
def term_rsl(out, batch, ctx):
    """MEK re-balanced smooth labels with ε = config.loss.rsl_epsilon."""
    return L.rebalanced_smooth_labels_loss(out["logits"], batch["label"],
                                           ctx.rebalance_weights, ctx.loss_cfg["rsl_epsilon"])


@TERMS.register("rac")
def term_rac(out, batch, ctx):
    """MEK re-balanced attention consistency (needs forward 'flip_pair')."""
    return L.rebalanced_attention_consistency_loss(out["cam"], out["cam_flipped"],
                                                   ctx.rebalance_weights)


@TERMS.register("eac")
def term_eac(out, batch, ctx):
    """EAC attention consistency (needs forward 'flip_pair')."""
    return L.attention_consistency_loss(out["cam"], out["cam_flipped"])


@TERMS.register("rul_add_up")
def term_rul(out, batch, ctx):
    """RUL add-up loss over mixed features (needs forward 'uncertainty_mix')."""
    return L.rul_add_up_loss(out["logits"], batch["label"], out["mix_perm"], _weights(ctx),
                             ctx.loss_cfg["class_weight_reduction"])


@TERMS.register("bbn")
def term_bbn(out, batch, ctx):
    """BBN mixed loss α·CE(z, y_c) + (1 − α)·CE(z, y_r) (needs forward 'dual_branch')."""
    return L.bbn_loss(out["logits"], batch["label"], batch["label_rev"], ctx.alpha)


REQUIRED_FORWARD = {"rac": "flip_pair", "eac": "flip_pair", "rul_add_up": "uncertainty_mix",
                    "bbn": "dual_branch"}


def check_recipe(loss_cfg) -> None:
    """Fails early, naming the config key, for terms and forwards that cannot work together."""
    FORWARDS.get(loss_cfg.forward)
    if loss_cfg.flip_bn not in FLIP_BN_MODES:
        raise ValueError(f"config.loss.flip_bn={loss_cfg.flip_bn!r}; expected one of "
                         f"{FLIP_BN_MODES}")
    terms = dict(loss_cfg.terms)
    if not terms:
        raise ValueError("config.loss.terms is empty: name at least one loss term")
    for name in terms:
        TERMS.get(name)
        needed = REQUIRED_FORWARD.get(name)
        if needed and loss_cfg.forward != needed:
            raise ValueError(f"config.loss.terms has {name!r}, which needs "
                             f"config.loss.forward={needed!r} (got {loss_cfg.forward!r})")


def total_loss(out: dict, batch: dict, ctx: StepContext, terms: tuple) -> tuple[jax.Array, dict]:
    """Σ weight · term, and each weighted term for logging. terms: ((name, weight), ...)."""
    values = {name: weight * TERMS.get(name)(out, batch, ctx) for name, weight in terms}
    return sum(values.values()), values
