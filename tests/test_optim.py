"""Optimizers and schedules against hand-computed updates."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ferjax.optim import learning_rate_schedule, make_optimizer
from ferjax.presets import base_config


def optim_cfg(**kw):
    cfg = base_config().optim
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


class Tiny(nnx.Module):
    def __init__(self):
        self.trunk = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
        self.head = nnx.Module()
        self.head.fc = nnx.Linear(2, 1, rngs=nnx.Rngs(1))


def test_adam_with_coupled_l2_matches_torch_adam_formula():
    cfg = optim_cfg(name="adam_l2", lr=0.1, weight_decay=0.5, schedule="constant")
    tx = make_optimizer(cfg, steps_per_epoch=10, total_steps=100)
    params = {"w": jnp.array([2.0, -1.0])}
    grads = {"w": jnp.array([0.3, 0.0])}
    updates, _ = tx.update(grads, tx.init(params), params)
    g = np.array([0.3, 0.0]) + 0.5 * np.array([2.0, -1.0])  # decay enters the moments
    m, v = 0.1 * g, 0.001 * g ** 2
    expected = -0.1 * (m / 0.1) / (np.sqrt(v / 0.001) + 1e-8)
    np.testing.assert_allclose(updates["w"], expected, rtol=1e-5)


def test_adamw_decay_is_decoupled():
    cfg = optim_cfg(name="adamw", lr=0.1, weight_decay=0.5, schedule="constant")
    tx = make_optimizer(cfg, steps_per_epoch=10, total_steps=100)
    params = {"w": jnp.array([2.0])}
    updates, _ = tx.update({"w": jnp.array([0.3])}, tx.init({"w": jnp.array([2.0])}), params)
    np.testing.assert_allclose(updates["w"], -0.1 * (1.0 + 0.5 * 2.0), rtol=1e-5)


def test_classifier_gets_its_own_learning_rate():
    model = Tiny()
    cfg = optim_cfg(name="sgd", lr=0.01, momentum=0.0, weight_decay=0.0, schedule="constant",
                    classifier_lr_multiplier=10.0)
    optimizer = nnx.Optimizer(model, make_optimizer(cfg, steps_per_epoch=1, total_steps=1),
                              wrt=nnx.Param)
    before = jax.tree.map(np.asarray, nnx.state(model, nnx.Param))
    grads = jax.tree.map(jnp.ones_like, nnx.state(model, nnx.Param))
    optimizer.update(model, grads)
    after = nnx.state(model, nnx.Param)
    np.testing.assert_allclose(before["trunk"]["kernel"][...] - after["trunk"]["kernel"][...],
                               0.01, rtol=1e-5)
    np.testing.assert_allclose(before["head"]["fc"]["kernel"][...]
                               - after["head"]["fc"]["kernel"][...], 0.1, rtol=1e-5)


def test_schedules():
    exp = learning_rate_schedule(optim_cfg(schedule="exponential", decay_rate=0.9), 1.0, 10, 100)
    assert float(exp(9)) == 1.0 and float(exp(10)) == pytest.approx(0.9)
    assert float(exp(25)) == pytest.approx(0.81)
    cos = learning_rate_schedule(optim_cfg(schedule="cosine", warmup_epochs=1.0, min_lr=0.0),
                                 1.0, 10, 110)
    assert float(cos(0)) == 0.0 and float(cos(5)) == pytest.approx(0.5)
    assert float(cos(10)) == pytest.approx(1.0) and float(cos(110)) == pytest.approx(0.0)
    step = learning_rate_schedule(optim_cfg(schedule="multistep", milestones=(2, 4),
                                            decay_rate=0.1), 1.0, 10, 100)
    assert float(step(19)) == 1.0 and float(step(20)) == pytest.approx(0.1)
    assert float(step(45)) == pytest.approx(0.01)
    with pytest.raises(ValueError, match="config.optim.schedule='linear'"):
        learning_rate_schedule(optim_cfg(schedule="linear"), 1.0, 10, 100)


def test_weight_decay_can_skip_norm_and_bias_parameters():
    cfg = optim_cfg(name="sgd", lr=1.0, momentum=0.0, weight_decay=0.1, decay_all=False,
                    schedule="constant")
    tx = make_optimizer(cfg, steps_per_epoch=1, total_steps=1)
    params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    np.testing.assert_allclose(updates["kernel"], -0.1)
    np.testing.assert_allclose(updates["bias"], 0.0)
