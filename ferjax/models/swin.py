"""Swin Transformer trunk (Liu et al., ICCV 2021) as MEK's official code runs it (spec §3.4).

Swin-T on 112 px faces with 2×2 patches: stages of 56², 28², 14² and 7² tokens (96, 192,
384, 768 channels), shifted 7×7 windows, stochastic depth rising to 0.1. As in MEK's
`SwinTransFER`, the last stage's tokens go through one more LayerNorm (`norm`) and are
returned as a (N, 7, 7, 768) feature map, which the linear head pools for the logits and
multiplies by its kernel for the class activation maps.

Attribute names follow the reference code (`patch_embed.proj`, `layers.2.blocks.5.attn.qkv`,
`layers.0.downsample.reduction`, ...), so a Swin state dict imports by name
(`ferjax.models.pretrained`). Tokens stay in (N, H, W, C) between blocks.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ferjax.models import layers

# The reference initialises every Linear with N(0, 0.02²) truncated at ±2, biases at 0.
_trunc_normal = nnx.initializers.truncated_normal(0.02)
_MASKED = -100.0  # the reference's additive mask between tokens of different regions


def _dense(in_features: int, out_features: int, *, bias: bool = True, dtype=None,
           rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(in_features, out_features, use_bias=bias, kernel_init=_trunc_normal,
                      dtype=dtype, rngs=rngs)


def _layer_norm(features: int, dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(features, epsilon=1e-5, dtype=dtype, rngs=rngs)


def window_partition(x, window: int):
    """(B, H, W, C) -> (B·H/w·W/w, w·w, C): the non-overlapping w×w windows, row-major."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // window, window, w // window, window, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, window * window, c)


def window_merge(windows, window: int, h: int, w: int):
    """The inverse of `window_partition`: (B·nW, w·w, C) -> (B, H, W, C)."""
    c = windows.shape[-1]
    x = windows.reshape(-1, h // window, w // window, window, window, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)


def relative_position_index(window: int) -> np.ndarray:
    """(w², w²) row of the bias table for each (query, key) pair of a window: the pair's
    offset (dy, dx), each in [−(w−1), w−1], numbered row-major in a (2w−1)² table."""
    coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij"))
    coords = coords.reshape(2, -1)
    offsets = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + window - 1
    return offsets[..., 0] * (2 * window - 1) + offsets[..., 1]


def shifted_window_mask(size: int, window: int, shift: int) -> np.ndarray:
    """(nW, w², w²) additive mask for shifted windows on a size×size grid: after the cyclic
    shift a window can hold tokens from up to four regions that are not neighbours in the
    image; attention between two such regions gets −100 (0 within a region)."""
    regions = np.zeros((1, size, size, 1), np.float32)
    bands = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for i, rows in enumerate(bands):
        for j, cols in enumerate(bands):
            regions[:, rows, cols, :] = 3 * i + j
    region = window_partition(regions, window)[..., 0]  # (nW, w²)
    return np.where(region[:, None, :] != region[:, :, None], _MASKED, 0.0).astype(np.float32)


class WindowAttention(nnx.Module):
    """Multi-head self-attention within each window, plus a learned bias per head and
    relative offset. Scores and softmax are in float32, as the reference keeps them."""

    def __init__(self, dim: int, num_heads: int, window: int, *, dtype=None,
                 rngs: nnx.Rngs):
        self.num_heads, self.window = num_heads, window
        self.qkv = _dense(dim, 3 * dim, dtype=dtype, rngs=rngs)
        self.proj = _dense(dim, dim, dtype=dtype, rngs=rngs)
        self.relative_position_bias_table = nnx.Param(
            _trunc_normal(rngs.params(), ((2 * window - 1) ** 2, num_heads)))

    def __call__(self, x: jax.Array, mask: np.ndarray | None = None) -> jax.Array:
        """x: (B·nW, w², C); mask: (nW, w², w²) or None -> (B·nW, w², C)."""
        n_windows, tokens, dim = x.shape
        head_dim = dim // self.num_heads
        q, k, v = self.qkv(x).reshape(n_windows, tokens, 3, self.num_heads,
                                      head_dim).transpose(2, 0, 3, 1, 4)
        q, k = q.astype(jnp.float32) * head_dim ** -0.5, k.astype(jnp.float32)
        scores = q @ jnp.swapaxes(k, -1, -2)  # (B·nW, heads, w², w²)
        bias = self.relative_position_bias_table[...][relative_position_index(self.window)]
        scores = scores + bias.transpose(2, 0, 1).astype(jnp.float32)
        if mask is not None:
            n_masks = mask.shape[0]
            scores = scores.reshape(-1, n_masks, self.num_heads, tokens, tokens) + \
                mask[None, :, None]
            scores = scores.reshape(n_windows, self.num_heads, tokens, tokens)
        weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
        out = (weights @ v).transpose(0, 2, 1, 3).reshape(n_windows, tokens, dim)
        return self.proj(out)


class Mlp(nnx.Module):
    """Dense(C -> 4C), exact GELU, Dense(4C -> C)."""

    def __init__(self, dim: int, hidden: int, *, dtype=None, rngs: nnx.Rngs):
        self.fc1 = _dense(dim, hidden, dtype=dtype, rngs=rngs)
        self.fc2 = _dense(hidden, dim, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


class SwinBlock(nnx.Module):
    """LayerNorm -> (shifted) window attention -> residual; LayerNorm -> MLP -> residual.
    Stochastic depth drops a sample's residual branch with probability `drop_path`."""

    def __init__(self, dim: int, num_heads: int, size: int, window: int, shift: int,
                 drop_path: float, *, dtype=None, rngs: nnx.Rngs):
        # A grid no larger than a window is one window, and shifting it would change nothing.
        self.window = min(window, size)
        self.shift = 0 if size <= window else shift
        self.size = size
        self.norm1 = _layer_norm(dim, dtype, rngs)
        self.attn = WindowAttention(dim, num_heads, self.window, dtype=dtype, rngs=rngs)
        self.norm2 = _layer_norm(dim, dtype, rngs)
        self.mlp = Mlp(dim, 4 * dim, dtype=dtype, rngs=rngs)
        # Dropout with the mask shared over (H, W, C) drops whole samples, scaled by 1/(1-p).
        self.drop_path = (nnx.Dropout(drop_path, broadcast_dims=(1, 2, 3), rngs=rngs)
                          if drop_path > 0 else None)

    def _residual(self, x: jax.Array) -> jax.Array:
        return x if self.drop_path is None else self.drop_path(x)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: (B, H, W, C) -> (B, H, W, C)."""
        _, h, w, _ = x.shape
        y = self.norm1(x)
        mask = None
        if self.shift:
            y = jnp.roll(y, (-self.shift, -self.shift), axis=(1, 2))
            mask = shifted_window_mask(self.size, self.window, self.shift)
        y = window_merge(self.attn(window_partition(y, self.window), mask), self.window, h, w)
        if self.shift:
            y = jnp.roll(y, (self.shift, self.shift), axis=(1, 2))
        x = x + self._residual(y)
        return x + self._residual(self.mlp(self.norm2(x)))


class PatchMerging(nnx.Module):
    """Halves the grid: each 2×2 group's tokens concatenated (4C), LayerNorm, Dense -> 2C."""

    def __init__(self, dim: int, *, dtype=None, rngs: nnx.Rngs):
        self.norm = _layer_norm(4 * dim, dtype, rngs)
        self.reduction = _dense(4 * dim, 2 * dim, bias=False, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        # The reference's order: (even row, even col), (odd, even), (even, odd), (odd, odd).
        x = jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2],
                             x[:, 1::2, 1::2]], axis=-1)
        return self.reduction(self.norm(x))


class SwinStage(nnx.Module):
    """`depth` blocks, every second one with shifted windows, then PatchMerging (not after
    the last stage)."""

    def __init__(self, dim: int, depth: int, num_heads: int, size: int, window: int,
                 drop_paths: Sequence[float], downsample: bool, *, dtype=None,
                 rngs: nnx.Rngs):
        self.blocks = nnx.List([
            SwinBlock(dim, num_heads, size, window, 0 if i % 2 == 0 else window // 2,
                      drop_paths[i], dtype=dtype, rngs=rngs) for i in range(depth)])
        self.downsample = PatchMerging(dim, dtype=dtype, rngs=rngs) if downsample else None

    def __call__(self, x: jax.Array) -> jax.Array:
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class PatchEmbed(nnx.Module):
    """Non-overlapping p×p patches -> `dim` channels (a stride-p convolution), LayerNorm."""

    def __init__(self, patch_size: int, dim: int, *, dtype=None, rngs: nnx.Rngs):
        # Explicit zero padding ('VALID') so that layers' CPU convolution takes it, which
        # in the microbatch loop writes out its gradients (215 -> 36 ms for 4 parts of 8).
        self.proj = nnx.Conv(3, dim, (patch_size, patch_size), strides=patch_size,
                             padding=((0, 0), (0, 0)), dtype=dtype, rngs=rngs,
                             conv_general_dilated=layers.conv_general_dilated)
        self.norm = _layer_norm(dim, dtype, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.norm(self.proj(x))


class SwinTransformer(nnx.Module):
    """Images (N, S, S, 3) -> LayerNorm-ed last-stage tokens as a feature map (N, s, s, C),
    s = S / (patch_size · 2^(stages−1)), C = embed_dim · 2^(stages−1)."""

    def __init__(self, *, image_size: int, patch_size: int = 2, embed_dim: int = 96,
                 depths: Sequence[int] = (2, 2, 6, 2), num_heads: Sequence[int] = (3, 6, 12, 24),
                 window: int = 7, drop_path: float = 0.1, dtype=None, rngs: nnx.Rngs):
        if len(depths) != len(num_heads):
            raise ValueError(f"model.depths {tuple(depths)} and model.num_heads "
                             f"{tuple(num_heads)} must have one entry per stage")
        grid = image_size // patch_size
        last = len(depths) - 1
        if image_size % patch_size or not grid or grid % 2 ** last:
            raise ValueError(f"data.image_size={image_size} does not fit Swin with patch size "
                             f"{patch_size} and {len(depths)} stages: the patch grid must "
                             f"halve {last} times")
        for stage in range(len(depths)):
            side = grid >> stage
            if side > window and side % window:
                raise ValueError(f"Swin stage {stage} has a {side}×{side} grid, which "
                                 f"{window}×{window} windows do not tile; use an image size "
                                 f"of {patch_size * window * 2 ** last}·n")
        self.patch_embed = PatchEmbed(patch_size, embed_dim, dtype=dtype, rngs=rngs)
        rates = np.linspace(0.0, drop_path, sum(depths)).tolist()  # rising with depth
        starts = np.cumsum([0, *depths]).tolist()
        self.layers = nnx.List([
            SwinStage(embed_dim * 2 ** i, depth, heads, grid >> i, window,
                      rates[starts[i]:starts[i + 1]], downsample=i < last, dtype=dtype,
                      rngs=rngs)
            for i, (depth, heads) in enumerate(zip(depths, num_heads))])
        self.num_features = embed_dim * 2 ** last
        self.norm = _layer_norm(self.num_features, dtype, rngs)
        self.output_side = grid >> last

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.patch_embed(x)
        for stage in self.layers:
            x = stage(x)
        return self.norm(x)
