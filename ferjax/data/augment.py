"""Per-example random augmentations that run on the accelerator, inside the jitted step.

Each op maps (key, image (H, W, 3) float32, params) -> image and is vmapped over the
batch with one key per example, derived from (seed, step): the stream of augmented
batches is a pure function of the config, whatever the device count or worker count.
Ops run in the order the config lists them; 'normalize' is itself an op, so erasing
and masking that fill after normalisation (RUL, EAC, RLR-CNet) come after it.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

from ferjax.data import randaugment
from ferjax.models.layers import materialize
from ferjax.registry import Registry

AugmentFn = Callable[[jax.Array, jax.Array, dict], jax.Array]
AUGMENTATIONS: Registry[AugmentFn] = Registry("augmentation")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _register(name):
    return AUGMENTATIONS.register(name)


def _normal(key, shape, dtype=jnp.float32) -> jax.Array:
    """`jax.random.normal(key, shape)`, drawn flat and reshaped: the same numbers, faster.

    JAX's (default) partitionable threefry derives each element's counter from its
    multi-dimensional index; a 1-D draw skips that arithmetic. Noise for 16 images at
    224 px took 17.9 -> 11.8 ms on 2 CPU cores (benchmarks/RESULTS.md).
    """
    return jax.random.normal(key, (math.prod(shape),), dtype).reshape(shape)


@_register("normalize")
def normalize(key, x, p):
    """(x − mean) / std with per-channel constants (ImageNet by default)."""
    mean = jnp.asarray(p.get("mean", IMAGENET_MEAN), x.dtype)
    std = jnp.asarray(p.get("std", IMAGENET_STD), x.dtype)
    return (x - mean) / std


@_register("flip")
def random_flip(key, x, p):
    """Horizontal flip with probability p['prob'] (0.5)."""
    return jnp.where(jax.random.uniform(key) < p.get("prob", 0.5), x[:, ::-1, :], x)


@_register("flip_or_noise")
def flip_or_noise(key, x, p):
    """RUL/EAC: with probability 0.5 apply one of {flip, Gaussian noise σ≈5.48/255}."""
    k_apply, k_which, k_noise = jax.random.split(key, 3)
    sigma = p.get("noise_std", math.sqrt(30.0) / 255.0)
    noisy = jnp.clip(x + sigma * _normal(k_noise, x.shape), 0.0, 1.0)
    chosen = jnp.where(jax.random.uniform(k_which) < 0.5, x[:, ::-1, :], noisy)
    return jnp.where(jax.random.uniform(k_apply) < p.get("prob", 0.5), chosen, x)


def _warp(x, matrix, offset, fill=0.0):
    """Bilinear resample: out[i, j] = x[matrix @ (i, j) + offset], `fill` outside.

    `ndimage.map_coordinates(order=1, mode='constant')` per channel, written out so that
    the channels share each tap's index and weight: one gather of (H·W, C) rows per tap
    instead of one per tap and channel (32 images at 224 px: 27 -> 13 ms on 2 CPU cores,
    bitwise equal; tests/test_augment.py).
    """
    h, w, c = x.shape
    ii, jj = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                          indexing="ij")
    src_i = matrix[0, 0] * ii + matrix[0, 1] * jj + offset[0]
    src_j = matrix[1, 0] * ii + matrix[1, 1] * jj + offset[1]
    top, left = jnp.floor(src_i), jnp.floor(src_j)
    frac_i, frac_j = src_i - top, src_j - left
    rows = x.reshape(h * w, c)
    out = jnp.zeros_like(x)
    for di, weight_i in ((0, 1.0 - frac_i), (1, frac_i)):
        for dj, weight_j in ((0, 1.0 - frac_j), (1, frac_j)):
            ti, tj = top + di, left + dj
            inside = (ti >= 0) & (ti <= h - 1) & (tj >= 0) & (tj <= w - 1)
            index = (jnp.clip(ti, 0, h - 1) * w + jnp.clip(tj, 0, w - 1)).astype(jnp.int32)
            tap = jnp.where(inside[..., None], rows[index.reshape(-1)].reshape(h, w, c), fill)
            out = out + (weight_i * weight_j)[..., None] * tap
    return out


@_register("affine")
def random_affine(key, x, p):
    """One warp for rotation (±degrees), scale range, and translation (fraction of size).

    Covers 'small rotation', crop-with-padding (translate) and random resized crop (scale).
    """
    h, w, _ = x.shape
    k_rot, k_scale, k_shift = jax.random.split(key, 3)
    deg = p.get("degrees", 10.0)
    angle = jnp.deg2rad(jax.random.uniform(k_rot, minval=-deg, maxval=deg))
    lo, hi = p.get("scale", (1.0, 1.0))
    scale = jax.random.uniform(k_scale, minval=lo, maxval=hi)
    shift = jax.random.uniform(k_shift, (2,), minval=-1.0, maxval=1.0) * p.get("translate", 0.0)
    cos, sin = jnp.cos(angle) / scale, jnp.sin(angle) / scale
    matrix = jnp.array([[cos, -sin], [sin, cos]])
    center = jnp.array([(h - 1) / 2, (w - 1) / 2])
    offset = center - matrix @ center + shift * jnp.array([h, w])
    return _warp(x, matrix, offset)


@_register("crop_pad")
def random_crop_with_padding(key, x, p):
    """Zero-pad by p['pad'] pixels and crop back at a random integer offset."""
    pad = int(p.get("pad", 4))
    h, w, c = x.shape
    padded = jnp.pad(x, ((pad, pad), (pad, pad), (0, 0)))
    di, dj = jax.random.randint(key, (2,), 0, 2 * pad + 1)
    return jax.lax.dynamic_slice(padded, (di, dj, 0), (h, w, c))


@_register("color_jitter")
def color_jitter(key, x, p):
    """Brightness, contrast and saturation factors drawn in [1 − s, 1 + s]."""
    kb, kc, ks = jax.random.split(key, 3)

    def factor(k, s):
        return jax.random.uniform(k, minval=1.0 - s, maxval=1.0 + s)

    x = x * factor(kb, p.get("brightness", 0.2))
    grey = jnp.mean(x, axis=-1, keepdims=True)
    x = (x - jnp.mean(grey)) * factor(kc, p.get("contrast", 0.2)) + jnp.mean(grey)
    x = (x - grey) * factor(ks, p.get("saturation", 0.2)) + grey
    return jnp.clip(x, 0.0, 1.0)


def _rectangles(key, h, w, n, area, aspect):
    """n random boxes (top, left, height, width) of area fraction and aspect ranges."""
    ka, kr, ki, kj = jax.random.split(key, 4)
    frac = jax.random.uniform(ka, (n,), minval=area[0], maxval=area[1])
    log_ratio = jax.random.uniform(kr, (n,), minval=math.log(aspect[0]),
                                   maxval=math.log(aspect[1]))
    ratio = jnp.exp(log_ratio)
    bh = jnp.clip(jnp.round(jnp.sqrt(frac * h * w * ratio)), 1, h)
    bw = jnp.clip(jnp.round(jnp.sqrt(frac * h * w / ratio)), 1, w)
    top = jnp.floor(jax.random.uniform(ki, (n,)) * (h - bh + 1))
    left = jnp.floor(jax.random.uniform(kj, (n,)) * (w - bw + 1))
    return top, left, bh, bw


def _box_mask(h, w, top, left, bh, bw):
    """(n, H, W) boolean masks of the boxes."""
    ii = jnp.arange(h)[None, :, None]
    jj = jnp.arange(w)[None, None, :]
    return ((ii >= top[:, None, None]) & (ii < (top + bh)[:, None, None])
            & (jj >= left[:, None, None]) & (jj < (left + bw)[:, None, None]))


ERASE_FILLS = ("zero", "mean", "random")  # what erased boxes are filled with


def _fill(key, x, mode):
    if mode == "zero":
        return jnp.zeros_like(x)
    if mode == "mean":
        return jnp.broadcast_to(jnp.mean(x, axis=(0, 1)), x.shape)
    if mode == "random":
        return _normal(key, x.shape, x.dtype)
    raise ValueError(f"erasing fill {mode!r}; expected one of {ERASE_FILLS}")


@_register("erase")
def random_erasing(key, x, p):
    """Random Erasing (one box): probability, area fraction range, aspect range, fill."""
    return random_masking(key, x, {"prob": p.get("prob", 0.5), "max_patches": 1,
                                   "area": p.get("area", (0.02, 0.25)),
                                   "aspect": p.get("aspect", (0.3, 3.3)),
                                   "fill": p.get("fill", "zero")})


@_register("random_mask")
def random_masking(key, x, p):
    """RLR-CNet's improved random masking (spec §4.4): with probability p, 1..max_patches
    independent boxes of the given area fraction and aspect ratio, filled per `fill`."""
    h, w, _ = x.shape
    n_max = int(p.get("max_patches", 3))
    k_apply, k_count, k_box, k_fill = jax.random.split(key, 4)
    top, left, bh, bw = _rectangles(k_box, h, w, n_max, p.get("area", (0.02, 0.10)),
                                    p.get("aspect", (0.3, 3.3)))
    count = jax.random.randint(k_count, (), 1, n_max + 1)
    active = jnp.arange(n_max) < count
    masked = jnp.any(_box_mask(h, w, top, left, bh, bw) & active[:, None, None], axis=0)
    apply = jax.random.uniform(k_apply) < p.get("prob", 0.5)
    fill = _fill(k_fill, x, p.get("fill", "random"))
    return jnp.where(apply & masked[..., None], fill, x)


# timm's RandAugment (rand-m9-mstd0.5-inc1 by default), written out in its own module.
_register("rand_augment")(randaugment.rand_augment)


# The values of config.data.train_resize: Pillow's filters of these names (bicubic: Keys'
# cubic, a = -0.5), antialiased when shrinking as Pillow's are.
RESIZE_METHODS = ("bilinear", "bicubic")


def resize_batch(x: jax.Array, size: int, method: str = "bilinear") -> jax.Array:
    """Resize of float images in [0, 1] (B, H, W, C) -> (B, size, size, C); as is when
    already that size. `method`: 'bilinear' or 'bicubic' (RESIZE_METHODS).

    The host batches at `config.data.host_image_size` (RAF-DB's native 100 px, say): a
    fifth of the bytes of 224 px to decode into, copy between processes and send to the
    device, where this resize is a pair of small matmuls (16 images 100 -> 224 px: 4 ms on
    2 CPU cores). Bilinear agrees with OpenCV's and PIL's within their uint8 rounding
    (tests/test_augment.py); shrinking is antialiased, as PIL's is. Bicubic overshoots
    near edges, and Pillow clips and rounds to uint8 after its horizontal pass and again
    at the end; done the same way here it matches Pillow's grey levels (up to 17 apart on
    noise without the intermediate step).
    """
    if method not in RESIZE_METHODS:
        raise ValueError(f"resize method {method!r}; expected one of {RESIZE_METHODS}")
    b, h, w, c = x.shape
    if (h, w) == (size, size):
        return x
    if method == "bilinear":
        return jax.image.resize(x, (b, size, size, c), "linear", antialias=True)

    def to_grey_levels(y):
        return jnp.round(jnp.clip(y, 0.0, 1.0) * 255.0) / 255.0

    x = to_grey_levels(jax.image.resize(x, (b, h, size, c), "cubic", antialias=True))
    return to_grey_levels(jax.image.resize(x, (b, size, size, c), "cubic", antialias=True))


# Ops that resample at computed coordinates. XLA:CPU fuses the ops before and after one
# into its gathers and recomputes them per tap: rlrcnet's five ops on 32 images at 224 px
# took 156 ms; with the warp's input and output materialized (a fence, identity elsewhere
# than on one CPU device) 62 ms, bitwise equal (benchmarks/RESULTS.md). Fencing every op
# made mek's ops slower (28 -> 30 ms). mek_swin's flip, RandAugment, normalise and erase on
# 32 images at 112 px: 116 -> 70 ms with RandAugment fenced.
WARPS = frozenset({"affine", "rand_augment"})


def augment_batch(key: jax.Array, images: jax.Array, ops: tuple,
                  size: int | None = None, resize: str = "bilinear") -> jax.Array:
    """Applies `ops` [(name, params), ...] to uint8 images (B, H, W, 3) -> float32
    (B, size, size, 3).

    Images are scaled to [0, 1] and resized to `size` (None: kept as they are) with the
    `resize` method first; each example gets its own key.
    """
    x = images.astype(jnp.float32) / 255.0
    if size is not None:
        x = resize_batch(x, size, resize)
    keys = jax.random.split(key, x.shape[0])
    for i, (name, params) in enumerate(ops):
        fn, params = AUGMENTATIONS.get(name), dict(params)
        if name in WARPS:
            x = materialize(x)
        x = jax.vmap(lambda k, img, fn=fn, i=i, params=params:
                     fn(jax.random.fold_in(k, i), img, params))(keys, x)
        if name in WARPS:
            x = materialize(x)
    return x


def _hashable(value):
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    return value


def parse_ops(augment_cfg) -> tuple:
    """`config.augment` -> ((name, params), ...), hashable so it can be a static jit argument.

    `augment_cfg.ops` lists op names in order; the params of op `name` are the fields of
    `augment_cfg.<name>` if that exists.
    """
    ops = []
    for name in augment_cfg.get("ops", ()):
        AUGMENTATIONS.get(name)  # fail early, naming the unknown op
        params = augment_cfg.get(name, None) or {}
        params = params.to_dict() if hasattr(params, "to_dict") else dict(params)
        ops.append((name, tuple(sorted((k, _hashable(v)) for k, v in params.items()))))
    return tuple(ops)
