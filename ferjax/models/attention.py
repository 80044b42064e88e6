"""Attention modules: CBAM (Woo et al. 2018) and Shuffle Attention (Zhang & Yang 2021).

Both take and return NHWC feature maps of the same shape.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from ferjax.models import layers


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def max_along(x: jax.Array, axis: int) -> jax.Array:
    """max over one axis (keepdims), its gradient split over the elements equal to the max.

    jnp.max's own gradient compares x with the max again in the backward pass, and when
    XLA recomputes x there with different rounding no element matches (count 0, NaN; seen
    on CPU with jax_disable_most_optimizations). Here the forward pins x in one buffer that
    both the max and the backward's comparison read, so at least one element always
    matches. An argmax gather gives the same gradient (bar exact ties, which it sends to
    one element), but XLA:CPU does not vectorise its variadic reduction: fwd+bwd of the 8
    CBAM blocks of a ResNet-18 step (16 images, 224 px) took 93 ms that way, 41 ms this
    way (benchmarks/RESULTS.md).
    """
    return jnp.max(x, axis=axis, keepdims=True)


def _max_along_fwd(x, axis):
    x = jax.lax.optimization_barrier(x)
    m = jnp.max(x, axis=axis, keepdims=True)
    return m, (x, m)


def _max_along_bwd(axis, residuals, g):
    x, m = residuals
    winners = x == m
    count = jnp.maximum(jnp.sum(winners, axis=axis, keepdims=True), 1).astype(g.dtype)
    return (jnp.where(winners, g / count, jnp.zeros((), g.dtype)),)


max_along.defvjp(_max_along_fwd, _max_along_bwd)


class ChannelGate(nnx.Module):
    """CBAM channel gate: a shared MLP on the avg- and max-pooled vectors, summed, sigmoid."""

    def __init__(self, channels: int, reduction: int = 16, gate_bias: float = 0.0, *,
                 dtype=None, rngs: nnx.Rngs):
        hidden = max(channels // reduction, 1)
        # The MLP runs twice and its outputs are summed, so each half carries gate_bias / 2.
        self.fc1 = layers.linear(channels, hidden, dtype=dtype, rngs=rngs)
        self.fc2 = layers.linear(hidden, channels, dtype=dtype, rngs=rngs,
                                 bias_init=nnx.initializers.constant(gate_bias / 2)
                                 if gate_bias else None)

    def __call__(self, x: jax.Array) -> jax.Array:
        n, h, w, c = x.shape
        spatial_max = max_along(x.reshape(n, h * w, c), axis=1)[:, 0]
        pooled = jnp.stack([jnp.mean(x, axis=(1, 2)), spatial_max])  # (2, N, C)
        scores = self.fc2(jax.nn.relu(self.fc1(pooled))).sum(axis=0)  # (N, C)
        return x * jax.nn.sigmoid(scores)[:, None, None, :]


class SpatialGate(nnx.Module):
    """CBAM spatial gate: 7x7 conv over [max_c, mean_c] -> BN -> sigmoid."""

    def __init__(self, gate_bias: float = 0.0, *, dtype=None, rngs: nnx.Rngs):
        self.conv = layers.conv(2, 1, 7, dtype=dtype, rngs=rngs)
        # torch momentum 0.01 in the official code -> Flax 0.99.
        self.bn = layers.batch_norm(1, momentum=0.99, epsilon=1e-5,
                                    bias_init=nnx.initializers.constant(gate_bias),
                                    dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        # Max first, then mean: the order of the official code (matters for weight import).
        pooled = jnp.concatenate([max_along(x, axis=-1), jnp.mean(x, axis=-1, keepdims=True)],
                                 axis=-1)
        return x * jax.nn.sigmoid(self.bn(self.conv(pooled)))


class CBAM(nnx.Module):
    """Convolutional Block Attention Module: channel gate then spatial gate.

    `gate_bias` > 0 opens both gates at init (sigmoid(3) ~ 0.95) so a pretrained
    block is not halved when CBAM is inserted; 0 is the faithful init.
    """

    def __init__(self, channels: int, reduction: int = 16, gate_bias: float = 0.0, *,
                 dtype=None, rngs: nnx.Rngs):
        self.channel_gate = ChannelGate(channels, reduction, gate_bias, dtype=dtype, rngs=rngs)
        self.spatial_gate = SpatialGate(gate_bias, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.spatial_gate(self.channel_gate(x))


def valid_sa_groups(channels: int) -> list[int]:
    """Group counts G for which Shuffle Attention fits `channels` (needs 2G | C)."""
    return [g for g in range(1, channels // 2 + 1) if channels % (2 * g) == 0]


class ShuffleAttention(nnx.Module):
    """Shuffle Attention (SA-Net). Input and output (N, H, W, C); needs C % (2·groups) == 0.

    Each of the G groups is split in two halves of c' = C / (2G) channels: a channel
    branch gated by its global mean and a spatial branch gated by a per-channel
    GroupNorm; gates are σ(w·s + b) with w, b shared over groups (init w=0, b=1).
    """

    def __init__(self, channels: int, groups: int = 8, *, dtype=None, rngs: nnx.Rngs):
        if channels % (2 * groups):
            raise ValueError(
                f"Shuffle Attention groups={groups} does not divide {channels} channels into "
                f"2·G equal parts; valid groups for {channels}: {valid_sa_groups(channels)}")
        self.groups = groups
        half = channels // (2 * groups)
        self.cweight = nnx.Param(jnp.zeros((half,)))
        self.cbias = nnx.Param(jnp.ones((half,)))
        self.sweight = nnx.Param(jnp.zeros((half,)))
        self.sbias = nnx.Param(jnp.ones((half,)))
        self.gn = nnx.GroupNorm(half, num_groups=half, epsilon=1e-5, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        n, h, w, c = x.shape
        g = self.groups
        # Channels are grouped as (G, C/G), as in the torch reshape; G joins the batch axis.
        sub = x.reshape(n, h, w, g, c // g).transpose(0, 3, 1, 2, 4).reshape(n * g, h, w, c // g)
        x0, x1 = jnp.split(sub, 2, axis=-1)
        s = jnp.mean(x0, axis=(1, 2), keepdims=True)
        x0 = x0 * jax.nn.sigmoid(self.cweight[...] * s + self.cbias[...])
        x1 = x1 * jax.nn.sigmoid(self.sweight[...] * self.gn(x1) + self.sbias[...])
        out = jnp.concatenate([x0, x1], axis=-1)
        out = out.reshape(n, g, h, w, c // g).transpose(0, 2, 3, 1, 4).reshape(n, h, w, c)
        return layers.channel_shuffle(out, 2)
