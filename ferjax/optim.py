"""Optimizers and learning-rate schedules of the three methods (spec §2.2, §3.7, §4.5).

- 'adam_l2': Adam with *coupled* L2 (wd·θ added to the gradient before the moments), as
  torch.optim.Adam(weight_decay=...) in RUL / EAC;
- 'adamw': decoupled weight decay (MEK's Swin recipe);
- 'sgd': momentum SGD (BBN / RLR-CNet).
The final classifier (`head.fc`) can get its own learning rate (RUL: 10x).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

OPTIMIZERS = ("adam_l2", "adamw", "sgd")
SCHEDULES = ("constant", "exponential", "cosine", "multistep")


def learning_rate_schedule(cfg, base_lr: float, steps_per_epoch: int,
                           total_steps: int) -> optax.Schedule:
    """Step -> learning rate, with optional linear warm-up.

    exponential: base · decay_rate^epoch (staircase, torch ExponentialLR per epoch);
    cosine: to min_lr at total_steps; multistep: × decay_rate at each of `milestones` (epochs).
    """
    name = cfg.schedule
    warmup = int(cfg.get("warmup_steps", 0) or cfg.get("warmup_epochs", 0) * steps_per_epoch)
    if name == "constant":
        main = optax.constant_schedule(base_lr)
    elif name == "exponential":
        main = optax.exponential_decay(base_lr, transition_steps=steps_per_epoch,
                                       decay_rate=cfg.decay_rate, staircase=True)
    elif name == "cosine":
        main = optax.cosine_decay_schedule(base_lr, max(total_steps - warmup, 1),
                                           alpha=cfg.min_lr / base_lr if base_lr else 0.0)
    elif name == "multistep":
        main = optax.piecewise_constant_schedule(
            base_lr, {int(e * steps_per_epoch) - warmup: cfg.decay_rate
                      for e in cfg.milestones})
    else:
        raise ValueError(f"config.optim.schedule={name!r}; expected one of {SCHEDULES}")
    if warmup <= 0:
        return main
    start = base_lr * cfg.get("warmup_start_factor", 0.0)
    return optax.join_schedules([optax.linear_schedule(start, base_lr, warmup), main], [warmup])


def _decay_mask(params, decay_all: bool):
    """Which parameters get weight decay: all, or only conv / dense kernels (ndim >= 2)."""
    return jax.tree.map(lambda p: decay_all or p.ndim >= 2, params)


def _one_optimizer(cfg, schedule) -> optax.GradientTransformation:
    name, wd = cfg.name, cfg.weight_decay
    mask = lambda params: _decay_mask(params, cfg.decay_all)  # noqa: E731
    if name == "adam_l2":
        return optax.chain(optax.masked(optax.add_decayed_weights(wd), mask),
                           optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps),
                           optax.scale_by_learning_rate(schedule))
    if name == "adamw":
        return optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=wd,
                           mask=mask)
    if name == "sgd":
        return optax.chain(optax.masked(optax.add_decayed_weights(wd), mask),
                           optax.sgd(schedule, momentum=cfg.momentum or None,
                                     nesterov=cfg.nesterov))
    raise ValueError(f"config.optim.name={name!r}; expected one of {OPTIMIZERS}")


def _is_classifier(path) -> bool:
    keys = [getattr(p, "key", getattr(p, "name", p)) for p in path]
    return len(keys) >= 2 and keys[0] == "head" and keys[1] == "fc"


def make_optimizer(cfg, *, steps_per_epoch: int, total_steps: int) -> optax.GradientTransformation:
    """The optax transformation for `config.optim`."""
    body = _one_optimizer(cfg, learning_rate_schedule(cfg, cfg.lr, steps_per_epoch, total_steps))
    multiplier = cfg.get("classifier_lr_multiplier", 1.0)
    if multiplier != 1.0:
        head = _one_optimizer(cfg, learning_rate_schedule(cfg, cfg.lr * multiplier,
                                                          steps_per_epoch, total_steps))

        def labels(params):
            return jax.tree_util.tree_map_with_path(
                lambda path, _: "classifier" if _is_classifier(path) else "body", params)

        body = optax.multi_transform({"body": body, "classifier": head}, labels)
    if cfg.get("clip_norm", 0.0) > 0:
        body = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), body)
    return body


def current_lr(cfg, step: int, steps_per_epoch: int, total_steps: int) -> float:
    """The body learning rate at `step` (for logging)."""
    return float(learning_rate_schedule(cfg, cfg.lr, steps_per_epoch, total_steps)(
        jnp.asarray(step)))
