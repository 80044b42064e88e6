"""Small building blocks shared by the backbones (NHWC throughout).

Layers are created with PyTorch-equivalent hyper-parameters (explicit symmetric
padding, BatchNorm eps 1e-5 and momentum 0.1 in torch terms) so that weights in
the torchvision key layout import one to one (see `ferjax.models.pretrained`).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from ferjax.models import winograd

Array = jax.Array
Dtype = Any

# torchvision initialises convs with kaiming-normal(fan_out, relu).
conv_init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


def cpu_fast_paths() -> bool:
    """Whether ops take the CPU forms below (Winograd, shifted views, hand-written pool
    and depthwise gradients, fusion fences) rather than XLA's own, as GPUs and TPUs do.
    One switch, so that tests can run the accelerator forms on CPU."""
    return jax.default_backend() == "cpu"


def conv(in_ch: int, out_ch: int, kernel: int, *, stride: int = 1, groups: int = 1,
         bias: bool = False, dtype: Dtype = None, rngs: nnx.Rngs) -> nnx.Conv:
    """A torch-style convolution: square kernel, padding kernel // 2 on every side."""
    pad = kernel // 2
    return nnx.Conv(in_ch, out_ch, (kernel, kernel), strides=(stride, stride),
                    padding=((pad, pad), (pad, pad)), feature_group_count=groups,
                    use_bias=bias, kernel_init=conv_init, dtype=dtype, rngs=rngs,
                    conv_general_dilated=conv_general_dilated)


def linear(in_features: int, out_features: int, *, bias_init=None, dtype: Dtype = None,
           rngs: nnx.Rngs) -> nnx.Linear:
    """A torch-style `nn.Linear`: kernel and bias uniform in ±1/sqrt(in_features).

    Flax's default (lecun-normal kernel, zero bias) has √3 times torch's kernel scale. That
    matters beyond parity: the class activation maps of EAC / MEK are features times this
    kernel, so their consistency loss starts 3x larger (spec §1.4).
    """
    bound = in_features ** -0.5

    def torch_uniform(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return nnx.Linear(in_features, out_features, kernel_init=torch_uniform,
                      bias_init=bias_init or torch_uniform, dtype=dtype, rngs=rngs)


def conv_general_dilated(lhs: Array, rhs: Array, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         precision=None, **kwargs) -> Array:
    """`lax.conv_general_dilated`, except on CPU for NHWC maps smaller than the kernel, for
    3x3 stride-1 convolutions wide enough to gain from Winograd's algorithm
    (`winograd.choose_tile`: ResNet-18's step at 224 px, 569 -> 506 ms), and for the others
    inside a loop body (`loop_body_convolutions`).

    XLA:CPU swaps the operands of a convolution whose kernel is larger than its input
    (a 3x3 kernel on ResNet's 2x2 last map at 64 px) into a layout its fast path does not
    take: 3x3 512->512 on 64x2x2 took 577 ms forward, 100x a 4x4 map's 4.6 ms (measured,
    benchmarks/RESULTS.md). The same happens in the backward pass of a strided convolution
    whose *output* is smaller than the kernel (4x4 -> 2x2: its input gradient convolves the
    2x2 output gradient; 156 ms of a 542 ms step). Both run here as one matmul over the k²
    shifted views, whose gradients are matmuls and slices.

    Large batches are not cut into slices: on a 2-core Intel Xeon with AMX, slices of 16
    made ResNet-18 steps 5-9 % slower at batch 32 and 64, under glibc and tcmalloc alike
    (benchmarks/RESULTS.md, thirteenth session). The gain they showed on an AMD EPYC was
    measured before ferjax's malloc settings stopped the step's buffers being faulted in
    anew every step, and was not measured again there.
    """
    on_cpu = cpu_fast_paths() and lhs.ndim == 4
    dims = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    nhwc = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
    plain = all(d is None or tuple(d) == (1, 1) for d in (lhs_dilation, rhs_dilation))
    cpu_nhwc = (on_cpu and plain and feature_group_count == 1 and not isinstance(padding, str)
                and dims == nhwc)
    if cpu_nhwc and _smaller_than_kernel(lhs.shape[1:3], rhs.shape[:2], window_strides, padding):
        return _shifted_views_matmul(lhs, rhs, tuple(window_strides), tuple(padding))

    # float32 only: Winograd's transforms would lose more to bfloat16 rounding than the
    # direct form does.
    if (cpu_nhwc and lhs.dtype == rhs.dtype == jnp.float32 and precision is None
            and all(v is None for v in kwargs.values()) and rhs.shape[:2] == (3, 3)
            and tuple(window_strides) == (1, 1)
            and tuple(map(tuple, padding)) == ((1, 1), (1, 1))):
        tile = winograd.choose_tile(min(lhs.shape[1:3]), *rhs.shape[2:])
        if tile:
            return winograd.conv3x3(lhs, rhs, tile)
    if (cpu_nhwc and _IN_LOOP.get() and precision is None
            and all(v is None for v in kwargs.values())):
        return conv_with_canonical_grads(lhs, rhs, tuple(window_strides),
                                         tuple(map(tuple, padding)))
    return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                        rhs_dilation, dimension_numbers, feature_group_count,
                                        precision=precision, **kwargs)


# Set while a loop body (train.microbatches' lax.scan) is traced; see loop_body_convolutions.
_IN_LOOP = contextvars.ContextVar("ferjax_conv_in_loop", default=False)


@contextlib.contextmanager
def loop_body_convolutions():
    """Convolutions traced inside this context, on CPU, get `conv_with_canonical_grads`.

    XLA:CPU brings a convolution gradient's operands into the one layout its fast kernel
    takes only outside loops; inside a `while` body it runs them as they come, 20-40x
    slower (jax-ml/jax#12868; a 3x3 32->32 gradient on 8x28x28: 4.3 ms outside, 177 ms in
    a 2-step scan; benchmarks/RESULTS.md)."""
    token = _IN_LOOP.set(True)
    try:
        yield
    finally:
        _IN_LOOP.reset(token)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_with_canonical_grads(x: Array, w: Array, strides: tuple, padding: tuple) -> Array:
    """NHWC x HWIO convolution whose gradients are themselves NHWC x HWIO convolutions
    (the form XLA:CPU runs fast), with the transposes written out:

      dx = (g dilated by the stride) correlated with the flipped kernel, in/out swapped;
      dw = x with (channels, batch) as (batch, features), correlated with g as the kernel,
           dilated by the stride.
    """
    return _conv_nhwc(x, w, strides, padding)


def _conv_nhwc(x, w, strides, padding, lhs_dilation=None, rhs_dilation=None):
    return jax.lax.conv_general_dilated(x, w, strides, padding, lhs_dilation, rhs_dilation,
                                        ("NHWC", "HWIO", "NHWC"))


def _canonical_fwd(x, w, strides, padding):
    return _conv_nhwc(x, w, strides, padding), (x, w)


def _canonical_bwd(strides, padding, residuals, g):
    x, w = residuals
    kernel, size, out = w.shape[:2], x.shape[1:3], g.shape[1:3]
    # dx: padded so that the (Ho-1)·s+1 dilated rows grow back to H + k - 1.
    dx_pad = [(k - 1 - lo, n + lo - (m - 1) * s - 1)
              for k, n, m, s, (lo, _) in zip(kernel, size, out, strides, padding)]
    w_flipped = jnp.swapaxes(w[::-1, ::-1], 2, 3)
    dx = _conv_nhwc(g, w_flipped, (1, 1), dx_pad, lhs_dilation=strides)
    # dw: rows the strided windows never reached are cut from the high padding.
    dw_pad = [(lo, hi - (n + lo + hi - k) % s)
              for k, n, s, (lo, hi) in zip(kernel, size, strides, padding)]
    dw = _conv_nhwc(jnp.transpose(x, (3, 1, 2, 0)), jnp.transpose(g, (1, 2, 0, 3)), (1, 1),
                    dw_pad, rhs_dilation=strides)
    return dx.astype(x.dtype), jnp.transpose(dw, (1, 2, 0, 3)).astype(w.dtype)


conv_with_canonical_grads.defvjp(_canonical_fwd, _canonical_bwd)


def _smaller_than_kernel(size, kernel, strides, padding) -> bool:
    """Whether the input or the output map of a convolution is smaller than its kernel."""
    for n, k, st, (lo, hi) in zip(size, kernel, strides, padding):
        if n < k or (n + lo + hi - k) // st + 1 < k:
            return True
    return False


def window_views(padded: Array, kernel: tuple[int, int],
                 stride: tuple[int, int]) -> list[Array]:
    """The kh·kw strided views of a padded NHWC map, one per kernel tap, row-major:
    view (i, j)[n, y, x] = padded[n, i + y·sh, j + x·sw], for every valid output (y, x).

    Convolutions and pools written as sums / maxima of these views are what XLA:CPU runs
    fast where its own kernels are slow (the small-map convolution, DepthwiseConv and
    max_pool_3x3_s2 below)."""
    (kh, kw), (sh, sw) = kernel, stride
    h_out, w_out = (padded.shape[1] - kh) // sh + 1, (padded.shape[2] - kw) // sw + 1
    return [padded[:, i:i + sh * (h_out - 1) + 1:sh, j:j + sw * (w_out - 1) + 1:sw, :]
            for i in range(kh) for j in range(kw)]


def _shifted_views_matmul(x: Array, w: Array, strides, padding) -> Array:
    """NHWC x HWIO convolution as [N, H', W', kh·kw·Cin] @ [kh·kw·Cin, Cout]."""
    kh, kw, cin, cout = w.shape
    pad_h, pad_w = padding
    xp = jnp.pad(x, ((0, 0), tuple(pad_h), tuple(pad_w), (0, 0)))
    views = window_views(xp, (kh, kw), strides)
    return jnp.concatenate(views, axis=-1) @ w.reshape(kh * kw * cin, cout)


class DepthwiseConv(nnx.Module):
    """Depthwise k x k convolution (torch `groups=C`, no bias), kernel (k, k, 1, C).

    On CPU it runs as a sum of k² shifted multiplies, which XLA fuses into one loop: 40x
    faster forward and 4x faster forward+backward than XLA:CPU's grouped convolution
    (measured at ShuffleNet sizes, benchmarks/RESULTS.md) and exactly equal. Other backends
    use the native grouped convolution. The parameter layout is nnx.Conv's either way.
    """

    def __init__(self, channels: int, kernel: int, *, stride: int = 1, dtype: Dtype = None,
                 rngs: nnx.Rngs):
        self.kernel = nnx.Param(conv_init(rngs.params(), (kernel, kernel, 1, channels)))
        self.stride = stride
        self.dtype = dtype

    def __call__(self, x: Array) -> Array:
        w = self.kernel[...]
        if self.dtype is not None:
            x, w = x.astype(self.dtype), w.astype(self.dtype)
        k, s = w.shape[0], self.stride
        pad = k // 2
        if not cpu_fast_paths():
            return jax.lax.conv_general_dilated(
                x, w, (s, s), ((pad, pad), (pad, pad)),
                dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=x.shape[-1])
        return _depthwise_shifted(x, w, s)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _depthwise_shifted(x: Array, w: Array, stride: int) -> Array:
    """Depthwise convolution (padding k//2) as a sum of k² shifted multiplies.

    The backward is written by hand: autodiff of the slices would scatter k² zero-padded
    copies of the gradient (3/4 of rlrcnet's CPU step, profile in RESULTS.md); instead the
    input gradient is the same shifted sum over the (dilated) output gradient with the
    kernel flipped, and the kernel gradient k² reductions in one variadic reduce.
    """
    return _depthwise_shifted_fwd(x, w, stride)[0]


def _depthwise_shifted_fwd(x, w, stride):
    k, pad = w.shape[0], w.shape[0] // 2
    padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    taps = window_views(padded, (k, k), (stride, stride))
    terms = [view * w[i // k, i % k, 0] for i, view in enumerate(taps)]
    return functools.reduce(jnp.add, terms), (padded, w)


def _depthwise_shifted_bwd(stride, residuals, g):
    padded, w = residuals
    k, pad = w.shape[0], w.shape[0] // 2
    h_in, w_in = padded.shape[1] - 2 * pad, padded.shape[2] - 2 * pad
    h_out, w_out = g.shape[1:3]
    # Input gradient: dilate g by the stride, pad to h_in + k - 1, correlate with the
    # flipped kernel (stride 1).
    low = k - 1 - pad
    high_h = h_in + k - 1 - low - (stride * (h_out - 1) + 1)
    high_w = w_in + k - 1 - low - (stride * (w_out - 1) + 1)
    zero = jnp.zeros((), g.dtype)
    g_padded = jax.lax.pad(g, zero, ((0, 0, 0), (low, high_h, stride - 1),
                                     (low, high_w, stride - 1), (0, 0, 0)))
    flipped = w[::-1, ::-1, 0]
    dx = functools.reduce(jnp.add, [view * flipped[i // k, i % k] for i, view
                                    in enumerate(window_views(g_padded, (k, k), (1, 1)))])
    # Kernel gradient: one pass computing all k² sums over (N, H, W).
    acc = jnp.promote_types(g.dtype, jnp.float32)  # accumulate bf16 products in fp32
    products = [(view * g).astype(acc)
                for view in window_views(padded, (k, k), (stride, stride))]
    sums = jax.lax.reduce(products, [jnp.zeros((), acc)] * len(products),
                          lambda acc, new: [a + b for a, b in zip(acc, new)], (0, 1, 2))
    dw = jnp.stack(sums).reshape(w.shape).astype(w.dtype)
    return dx.astype(padded.dtype), dw


_depthwise_shifted.defvjp(_depthwise_shifted_fwd, _depthwise_shifted_bwd)


def batch_norm(features: int, *, momentum: float = 0.9, epsilon: float = 1e-5,
               affine: bool = True, bias_init=nnx.initializers.zeros_init(),
               dtype: Dtype = None, rngs: nnx.Rngs) -> BatchNorm:
    """BatchNorm; Flax `momentum=0.9` equals torch's default `momentum=0.1`."""
    return BatchNorm(features, momentum=momentum, epsilon=epsilon, use_bias=affine,
                     use_scale=affine, bias_init=bias_init, use_fast_variance=False,
                     dtype=dtype, rngs=rngs)


class BatchNorm(nnx.BatchNorm):
    """`nnx.BatchNorm` (same parameters, statistics and values) whose training-mode pass
    over features on the last axis is `batch_norm_train`, with its hand-written backward.

    Autodiff of the two-pass statistics makes more passes over the activation than the
    textbook backward's two sums and one elementwise pass. Measured in the training step,
    224 px, batch 16, alternating in one process on a 2-core Xeon: baseline 802 -> 776 ms,
    rul_cbam 981 -> 940, mek 1,659 -> 1,594 (benchmarks/RESULTS.md). Masks, `axis_name`,
    the fast variance and other feature axes go to Flax's own path.
    """

    def __call__(self, x, use_running_average: bool | None = None, *, mask=None):
        running = (self.use_running_average if use_running_average is None
                   else use_running_average)
        if (running or mask is not None or self.axis_name is not None
                or self.use_fast_variance or self.axis not in (-1, x.ndim - 1)):
            return super().__call__(x, use_running_average, mask=mask)
        ones = jnp.ones((x.shape[-1],), jnp.float32)
        scale = self.scale[...] if self.scale is not None else ones
        bias = self.bias[...] if self.bias is not None else jnp.zeros_like(ones)
        x, scale, bias = self.promote_dtype((x, scale, bias), dtype=self.dtype)
        y, mean, var = batch_norm_train(x, scale, bias, self.epsilon)
        keep = self.momentum
        self.mean[...] = jax.lax.stop_gradient(keep * self.mean[...] + (1 - keep) * mean)
        self.var[...] = jax.lax.stop_gradient(keep * self.var[...] + (1 - keep) * var)
        return y


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(x: Array, scale: Array, bias: Array,
                     epsilon: float) -> tuple[Array, Array, Array]:
    """Batch normalisation over every axis but the last, with batch statistics.

    x: (..., C); scale, bias: (C,). Returns (y, mean, var): y like x, in the dtype x, scale
    and bias promote to; mean and the biased variance (C,) in float32 (at least), which is
    also where the statistics and the normalisation are computed, as in Flax's BatchNorm.
    """
    return _batch_norm_train_fwd(x, scale, bias, epsilon)[0]


def _batch_norm_train_fwd(x, scale, bias, epsilon):
    axes = tuple(range(x.ndim - 1))
    wide = jnp.promote_types(x.dtype, jnp.float32)
    xw = x.astype(wide)
    mean = jnp.mean(xw, axes)
    var = jnp.mean(jnp.square(xw - mean), axes)
    inv_std = jax.lax.rsqrt(var + epsilon)
    y = (xw - mean) * (inv_std * scale) + bias
    out_dtype = jnp.result_type(x, scale, bias)
    return (y.astype(out_dtype), mean, var), (x, mean, inv_std, scale, bias)


def _batch_norm_train_bwd(epsilon, residuals, cotangents):
    x, mean, inv_std, scale, bias = residuals
    g, g_mean, g_var = cotangents
    axes = tuple(range(x.ndim - 1))
    count = x.size // x.shape[-1]
    centered = x.astype(mean.dtype) - mean
    x_hat = centered * inv_std
    g = g.astype(mean.dtype)
    g_bias = jnp.sum(g, axes)
    g_scale = jnp.sum(g * x_hat, axes)
    # d/dx of (x_hat·scale + bias) through the batch mean and variance, plus whatever
    # reached the returned statistics themselves (zero when they only feed running averages).
    g_x = ((scale * inv_std / count) * (count * g - g_bias - x_hat * g_scale)
           + g_mean / count + (2.0 / count) * g_var * centered)
    return (g_x.astype(x.dtype), g_scale.astype(scale.dtype), g_bias.astype(bias.dtype))


batch_norm_train.defvjp(_batch_norm_train_fwd, _batch_norm_train_bwd)


def fusion_fence(tree):
    """The same arrays, computed before anything that reads them (XLA:CPU).

    XLA:CPU drops `lax.optimization_barrier` before fusion, so a cheap-looking producer can
    still be fused into a consumer that reads each element many times, and recomputed each
    time. A conditional is a boundary fusion does not cross; its predicate reads the data,
    so it cannot be folded away, and both branches return the operands unchanged.
    """
    leaves = jax.tree.leaves(tree)
    probe = jnp.isnan(leaves[0].reshape(-1)[0])
    return jax.lax.cond(probe, lambda t: jax.tree.map(lambda a: a + 0, t), lambda t: t, tree)


@jax.custom_vjp
def materialize(x: Array) -> Array:
    """x, computed once into a buffer of its own before anything reads it (CPU only).

    For a convolution's weight gradient XLA:CPU wants the input activation transposed to
    [C, H, W, N]. It fuses that copy with the elementwise ops that produced the activation
    (BatchNorm, ReLU, the residual addition, the augmentation), and recomputes them in
    the transposed order, which reads memory with large strides: a 16x56x56x64 copy with
    BatchNorm and ReLU fused into it took 2.4-2.9 ms, the plain transpose 0.6 ms. The
    ResNet-18 step had 111 ms of these copies; materialized activations took them to 44 ms
    (benchmarks/RESULTS.md). The gradient passes through unchanged. Other backends fuse
    differently, so there it is the identity; so it is under a mesh of several (fake CPU)
    devices, where the fence's predicate, one element of a sharded array, would cost a
    collective each time (mek at 64 px on 8 fake devices: 256 -> 228 images/s).
    """
    several_devices = jax.sharding.get_abstract_mesh().size > 1
    return x if not cpu_fast_paths() or several_devices else fusion_fence(x)


materialize.defvjp(lambda x: (materialize(x), None), lambda _, g: (g,))


def max_pool_3x3_s2(x: Array) -> Array:
    """torch `MaxPool2d(3, stride=2, padding=1)`: padding never wins the max.

    On CPU it runs as the max of 9 strided views with a hand-written backward: XLA:CPU
    lowers the native pool's gradient (select-and-scatter) through index tensors, 4x slower
    at ResNet's 112 px stem (207 -> 48 ms forward+backward, benchmarks/RESULTS.md). The
    forward keeps which tap won each window (int8) for the backward. Same values and, like
    torch, the gradient goes to the first maximum of each window.
    """
    if not cpu_fast_paths():
        return nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    return _strided_max_pool(x)


def _strided_max_pool_fwd(x: Array):
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
    taps = window_views(padded, (3, 3), (2, 2))
    out, winner = taps[0], jnp.zeros(taps[0].shape, jnp.int8)
    for index, tap in enumerate(taps[1:], 1):
        # Strictly greater: a tie keeps the earlier tap, so each window's gradient goes
        # to its first maximum, as in torch.
        winner = jnp.where(tap > out, jnp.int8(index), winner)
        out = jnp.maximum(out, tap)
    return out, (winner, x.shape[1:3])


def _strided_max_pool_bwd(residuals, g: Array):
    winner, (h, w) = residuals
    # Materialise g and the winners first. Otherwise XLA fuses whatever computed them
    # into this loop and recomputes it for every tap that reads them: after ShuffleNet's
    # depthwise backward (a 25-term shifted sum, two branches) that one fusion took 195 ms
    # of rlrcnet's 670 ms step at 224 px (benchmarks/RESULTS.md), and the winners' chain
    # of comparisons 70 ms of ResNet-18's.
    g, winner = fusion_fence((g, winner))
    n, h_out, w_out, c = g.shape
    zero = jnp.zeros((), g.dtype)
    # Tap (i, j) of output (r, s) is padded position (2r + i, 2s + j). Split the padded
    # map by the parity of (row, column): each of the four parts is a sum of 1, 2 or 4
    # shifted copies of g, masked to the windows that tap won, and the parts interleave
    # back into the map. Scattering each tap into the whole map instead (zeros between
    # the strided positions) cost 11 ms of ResNet-18's 224 px step at batch 16.
    parts: dict[tuple[int, int], Array] = {}
    for index in range(9):
        i, j = divmod(index, 3)
        term = jnp.pad(jnp.where(winner == index, g, zero),
                       ((0, 0), (i // 2, 1 - i // 2), (j // 2, 1 - j // 2), (0, 0)))
        key = (i % 2, j % 2)
        parts[key] = term + parts[key] if key in parts else term
    # Fenced, or XLA fuses the parts into the interleaving copy and evaluates all nine
    # terms for every position of the map (9.8 ms).
    parts = fusion_fence(parts)
    rows = [jnp.stack([parts[(row, 0)], parts[(row, 1)]], axis=3) for row in (0, 1)]
    padded = jnp.stack(rows, axis=2).reshape(n, 2 * h_out + 2, 2 * w_out + 2, c)
    return (padded[:, 1:1 + h, 1:1 + w, :],)


_strided_max_pool = jax.custom_vjp(lambda x: _strided_max_pool_fwd(x)[0])
_strided_max_pool.defvjp(_strided_max_pool_fwd, _strided_max_pool_bwd)


def global_avg_pool(x: Array) -> Array:
    """(N, H, W, C) -> (N, C), averaged in float32 for stability under bf16."""
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(x.dtype)


def channel_shuffle(x: Array, groups: int) -> Array:
    """ShuffleNet channel shuffle for NHWC; same channel order as torch's NCHW version."""
    n, h, w, c = x.shape
    x = x.reshape(n, h, w, groups, c // groups)
    return jnp.swapaxes(x, 3, 4).reshape(n, h, w, c)


def beta_mish(x: Array, beta: float = 1.5) -> Array:
    """β-Mish: x · tanh(β · softplus(x)); β = 1 is Mish."""
    return x * jnp.tanh(beta * jax.nn.softplus(x))


ACTIVATIONS = ("relu", "mish", "beta_mish")  # config.model.activation
DTYPES = ("float32", "fp32", "bfloat16", "bf16")  # config.model.dtype


def activation(name: str, beta: float = 1.5) -> Callable[[Array], Array]:
    """Activation by config name: 'relu', 'mish' or 'beta_mish'."""
    if name == "relu":
        return jax.nn.relu
    if name == "mish":
        return functools.partial(beta_mish, beta=1.0)
    if name == "beta_mish":
        return functools.partial(beta_mish, beta=beta)
    raise ValueError(f"unknown activation {name!r}; expected 'relu', 'mish' or 'beta_mish'")


def dtype_from_name(name: str | None) -> Dtype:
    """Compute dtype from a config string; parameters always stay float32."""
    if name in (None, "float32", "fp32"):
        return jnp.float32
    if name in ("bfloat16", "bf16"):
        return jnp.bfloat16
    raise ValueError(f"unknown compute dtype {name!r}; expected 'float32' or 'bfloat16'")
