"""RandAugment as timm's `rand-m{M}-mstd{S}[-inc1]` runs it on PIL images, on the device.

Each of `num_layers` layers picks one of 15 ops uniformly (with replacement) and applies
it with probability `prob` at a magnitude drawn from N(M, S) clipped to [0, 10]; signed
ops are negated half the time. The ops work on grey levels 0..255 and keep them integer
after every op, as 8-bit PIL images do, with PIL's rounding (tests/test_randaugment.py
compares each op with Pillow).

Under vmap a per-example choice between ops computes them all, so the ops come in three
shapes that compose into one cheap pass per layer: grey-level tables (AutoContrast,
Equalize, Invert, Posterize, Solarize, SolarizeAdd), one affine resample (Rotate, ShearX/Y,
TranslateX/YRel) and one blend with a degenerate image (Color, Contrast, Brightness,
Sharpness). The ops not chosen get the identity of their shape, which is exact.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

OPS = ("auto_contrast", "equalize", "invert", "rotate", "posterize", "solarize",
       "solarize_add", "color", "contrast", "brightness", "sharpness", "shear_x", "shear_y",
       "translate_x", "translate_y")
_TABLE_OPS = ("auto_contrast", "equalize", "invert", "posterize", "solarize", "solarize_add")
_AFFINE_OPS = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")
_BLEND_OPS = ("color", "contrast", "brightness", "sharpness")
_MAX_LEVEL = 10.0


def _choose(op: jax.Array, candidates: dict, identity: jax.Array) -> jax.Array:
    """candidates[name] when op is OPS.index(name), else identity, as a one-hot product.

    XLA fused a chain of selects into every reader of the result and recomputed it per
    pixel (the affine taps' indices, the table lookups); a product it computes once, and
    at HIGHEST precision it only copies the chosen values. One layer on 32 images at
    112 px, 2 CPU cores: 86 -> 56 ms.
    """
    names = list(candidates)
    hot = op == jnp.array([OPS.index(n) for n in names])
    weights = jnp.append(hot, ~jnp.any(hot)).astype(jnp.float32)
    stacked = jnp.stack([*(jnp.broadcast_to(candidates[n], identity.shape) for n in names),
                         identity]).astype(jnp.float32)
    chosen = jnp.tensordot(weights, stacked.reshape(len(names) + 1, -1), 1,
                           precision=jax.lax.Precision.HIGHEST)
    return chosen.reshape(identity.shape).astype(identity.dtype)


def _grey(v: jax.Array) -> jax.Array:
    """PIL's RGB -> L: (19595 R + 38470 G + 7471 B + 2^15) >> 16, on (H, W, 3) -> (H, W)."""
    q = v.astype(jnp.int32)
    return ((q[..., 0] * 19595 + q[..., 1] * 38470 + q[..., 2] * 7471 + 32768) >> 16
            ).astype(v.dtype)


def _smooth(v: jax.Array) -> jax.Array:
    """PIL's ImageFilter.SMOOTH: 3x3 kernel [1 1 1; 1 5 1; 1 1 1] / 13, rounded; the
    one-pixel border is kept as it is."""
    h, w, _ = v.shape
    padded = jnp.pad(v, ((1, 1), (1, 1), (0, 0)))
    total = 4.0 * v + sum(padded[i:i + h, j:j + w] for i in range(3) for j in range(3))
    inner = jnp.floor(total / 13.0 + 0.5)
    ii = jnp.arange(h)[:, None, None]
    jj = jnp.arange(w)[None, :, None]
    border = (ii == 0) | (ii == h - 1) | (jj == 0) | (jj == w - 1)
    return jnp.where(border, v, inner)


def _tables(v: jax.Array, op: jax.Array, level: jax.Array, increasing: bool) -> jax.Array:
    """The (3, 256) grey-level table of table op `op` (identity for the other ops)."""
    h, w, _ = v.shape
    q = v.astype(jnp.int32)
    i = jnp.arange(256, dtype=jnp.int32)
    identity = jnp.broadcast_to(i, (3, 256))
    lo = jnp.min(q, axis=(0, 1))[:, None]
    hi = jnp.max(q, axis=(0, 1))[:, None]
    # AutoContrast: stretch [lo, hi] to [0, 255] (the exact quotient; PIL's double
    # arithmetic can land one level lower where it is an integer).
    stretched = jnp.clip((i - lo) * 255 // jnp.maximum(hi - lo, 1), 0, 255)
    auto_contrast = jnp.where(hi > lo, stretched, identity)
    # Equalize, PIL's way: steps of (pixels - count of the top level) // 256.
    hist = jnp.zeros((3, 256), jnp.int32).at[jnp.arange(3), q.reshape(-1, 3)].add(1)
    top_count = jnp.take_along_axis(hist, hi, axis=1)
    step = (h * w - top_count) // 256
    below = jnp.cumsum(hist, axis=1) - hist
    equalized = jnp.clip((step // 2 + below) // jnp.maximum(step, 1), 0, 255)
    distinct = jnp.sum(hist > 0, axis=1, keepdims=True)
    equalize = jnp.where((distinct > 1) & (step > 0), equalized, identity)
    # Posterize keeps `bits` high bits, Solarize inverts from `threshold` up; the
    # increasing variants get stronger with the level.
    bits = jnp.floor(level / _MAX_LEVEL * 4).astype(jnp.int32)
    bits = 4 - bits if increasing else bits
    bucket = jnp.left_shift(1, 8 - bits)
    posterize = identity // bucket * bucket
    threshold = jnp.floor(level / _MAX_LEVEL * 256).astype(jnp.int32)
    threshold = 256 - threshold if increasing else threshold
    solarize = jnp.where(identity < threshold, identity, 255 - identity)
    add = jnp.floor(level / _MAX_LEVEL * 110).astype(jnp.int32)
    solarize_add = jnp.where(identity < 128, jnp.minimum(identity + add, 255), identity)
    by_name = {"auto_contrast": auto_contrast, "equalize": equalize,
               "invert": 255 - identity, "posterize": posterize, "solarize": solarize,
               "solarize_add": solarize_add}
    return _choose(op, by_name, identity)


def _apply_table(v: jax.Array, table: jax.Array) -> jax.Array:
    """v (H, W, 3) through the per-channel tables (3, 256), as one flat lookup."""
    index = v.astype(jnp.int32) + 256 * jnp.arange(3)
    return table.reshape(-1)[index].astype(v.dtype)


def _affine_matrix(op, level, sign, h, w, translate_pct):
    """PIL's affine data (a, b, c, d, e, f): the output pixel at (x, y) = (column, row)
    + 0.5 reads the input at (a x + b y + c, d x + e y + f); identity for other ops."""
    degrees = sign * level / _MAX_LEVEL * 30.0
    # Image.rotate: counter-clockwise about the centre (w / 2, h / 2).
    angle = -jnp.deg2rad(degrees)
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    cx, cy = w / 2.0, h / 2.0
    rotate = jnp.stack([cos, sin, cx - cos * cx - sin * cy,
                        -sin, cos, cy + sin * cx - cos * cy])
    shear = sign * level / _MAX_LEVEL * 0.3
    shift = sign * level / _MAX_LEVEL * translate_pct
    one, zero = jnp.ones(()), jnp.zeros(())
    by_name = {"rotate": rotate,
               "shear_x": jnp.stack([one, shear, zero, zero, one, zero]),
               "shear_y": jnp.stack([one, zero, zero, shear, one, zero]),
               "translate_x": jnp.stack([one, zero, shift * w, zero, one, zero]),
               "translate_y": jnp.stack([one, zero, zero, zero, one, shift * h])}
    return _choose(op, by_name, jnp.stack([one, zero, zero, zero, one, zero]))


def _cubic_weights(d):
    """PIL's affine bicubic taps at offsets -1, 0, 1, 2 (cubic convolution with a = -1)."""
    return (-d + 2 * d * d - d ** 3, 1 - 2 * d * d + d ** 3, d + d * d - d ** 3,
            -d * d + d ** 3)


def _linear_weights(d):
    return (1 - d, d)


_GRID = 16384  # sub-pixel steps of the resampling positions
_KERNELS = {"bicubic": (_cubic_weights, -1), "bilinear": (_linear_weights, 0)}


def _pil_affine(v: jax.Array, matrix: jax.Array, fill: jax.Array, interpolation: str):
    """Image.transform(AFFINE) of an 8-bit image: taps clamped at the edges, `fill` where
    the source point falls outside the image, truncated to integers."""
    h, w, c = v.shape
    weights_fn, first = _KERNELS[interpolation]
    yy, xx = jnp.meshgrid(jnp.arange(h, dtype=v.dtype) + 0.5,
                          jnp.arange(w, dtype=v.dtype) + 0.5, indexing="ij")
    x_in = matrix[0] * xx + matrix[1] * yy + matrix[2]
    y_in = matrix[3] * xx + matrix[4] * yy + matrix[5]
    # XLA recomputes these coordinates in each fusion that reads them, with and without
    # fused multiply-adds: an exact hit on a pixel (1.5) came out as 1.4999999 in one, and
    # taps from one copy with weights from the other read the neighbour at full weight.
    # On a grid of 1/16384 pixel both copies round to the same point.
    qx = jnp.round((x_in - 0.5) * _GRID).astype(jnp.int32)
    qy = jnp.round((y_in - 0.5) * _GRID).astype(jnp.int32)
    half = _GRID // 2
    inside = (qx >= -half) & (qx < w * _GRID - half) & (qy >= -half) & (qy < h * _GRID - half)
    x0, y0 = qx // _GRID, qy // _GRID
    dx, dy = (qx % _GRID) / _GRID, (qy % _GRID) / _GRID
    wx, wy = weights_fn(dx), weights_fn(dy)
    rows = v.reshape(h * w, c)
    out = jnp.zeros_like(v)
    for i, weight_y in enumerate(wy):
        row = jnp.clip(y0 + first + i, 0, h - 1) * w
        for j, weight_x in enumerate(wx):
            index = row + jnp.clip(x0 + first + j, 0, w - 1)
            tap = rows[index.reshape(-1)].reshape(h, w, c)
            out = out + (weight_y * weight_x)[..., None] * tap
    return jnp.where(inside[..., None], jnp.clip(jnp.floor(out), 0, 255), fill)


def _blend(v, op, level, sign, increasing):
    """Image.blend(degenerate, v, factor) for the enhance ops; v itself for the others."""
    if increasing:  # 1 ± 0.9 level / 10, at least 0.1
        factor = jnp.maximum(0.1, 1.0 + sign * level / _MAX_LEVEL * 0.9)
    else:  # 0.1 .. 1.9 with the level
        factor = level / _MAX_LEVEL * 1.8 + 0.1
    grey = _grey(v)
    mean_grey = (2 * jnp.sum(grey.astype(jnp.int32)) + grey.size) // (2 * grey.size)
    by_name = {"color": grey[..., None], "contrast": mean_grey.astype(v.dtype),
               "brightness": jnp.zeros((), v.dtype), "sharpness": _smooth(v)}
    degenerate = jnp.zeros_like(v)
    for name in _BLEND_OPS:
        degenerate = jnp.where(op == OPS.index(name), by_name[name], degenerate)
    factor = jnp.where(jnp.isin(op, jnp.array([OPS.index(n) for n in _BLEND_OPS])),
                       factor, 1.0)
    # Both are integers, so factor 1 gives v exactly; PIL truncates in float32.
    return jnp.clip(jnp.floor(degenerate + factor * (v - degenerate)), 0, 255)


def apply_op(v: jax.Array, op, level, sign, *, increasing=True, interpolation="bicubic",
             fill=(128, 128, 128), translate_pct=0.45) -> jax.Array:
    """Op number `op` (index into OPS) at magnitude `level` (0..10) with sign ±1 on grey
    levels v (H, W, 3) float32 holding integers 0..255 -> same shape.

    `increasing` picks timm's '-inc1' variants, where Posterize, Solarize and the enhance
    ops get stronger with the level; without it they follow timm's original level maps.
    """
    h, w, _ = v.shape
    v = _apply_table(v, _tables(v, op, level, increasing))
    matrix = _affine_matrix(op, level, sign, h, w, translate_pct)
    v = _pil_affine(v, matrix, jnp.asarray(fill, v.dtype), interpolation)
    return _blend(v, op, level, sign, increasing)


def rand_augment(key: jax.Array, x: jax.Array, p: dict) -> jax.Array:
    """RandAugment on one float image x (H, W, 3) in [0, 1] -> same; params (defaults are
    timm's rand-m9-mstd0.5-inc1 with its bicubic, grey-128 fill):
    num_layers 2, magnitude 9, magnitude_std 0.5 (inf: uniform in [0, magnitude], as timm
    takes mstd > 100), magnitude_max 10, prob 0.5, increasing True,
    interpolation 'bicubic' | 'bilinear', fill (128,)*3, translate_pct 0.45.
    """
    interpolation = p.get("interpolation", "bicubic")
    if interpolation not in _KERNELS:
        raise ValueError(f"config.augment.rand_augment.interpolation is {interpolation!r}; "
                         f"expected one of {sorted(_KERNELS)}")
    v = jnp.round(jnp.clip(x, 0.0, 1.0) * 255.0)
    magnitude, spread = p.get("magnitude", 9.0), p.get("magnitude_std", 0.5)
    for k in jax.random.split(key, int(p.get("num_layers", 2))):
        k_op, k_apply, k_level, k_sign = jax.random.split(k, 4)
        op = jax.random.randint(k_op, (), 0, len(OPS))
        if spread > 100:
            level = jax.random.uniform(k_level, maxval=magnitude)
        else:
            level = magnitude + spread * jax.random.normal(k_level)
        level = jnp.clip(level, 0.0, p.get("magnitude_max", _MAX_LEVEL))
        sign = jnp.where(jax.random.uniform(k_sign) > 0.5, -1.0, 1.0)
        out = apply_op(v, op, level, sign, increasing=p.get("increasing", True),
                       interpolation=interpolation,
                       fill=p.get("fill", (128, 128, 128)),
                       translate_pct=p.get("translate_pct", 0.45))
        v = jnp.where(jax.random.uniform(k_apply) <= p.get("prob", 0.5), out, v)
    return v / 255.0
