"""3x3 stride-1 convolutions as Winograd F(2x2, 3x3) (Lavin & Gray 2016), for XLA:CPU.

Each 2x2 output tile comes from a 4x4 input tile d and the 3x3 kernel g as

    Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A,

so a convolution becomes 16 independent matmuls [tiles, Cin] @ [Cin, Cout], one per
position in the 4x4 transformed tile, with 2.25x fewer multiplications than the direct
form. The transforms are additions over strided views. The backward pass is written out
the same way: the output gradient goes through Aᵀ's adjoint, then two batched matmuls
give the gradients of the transformed input and kernel, and the adjoints of B and G take
them back. On a 2-core AMD EPYC, batch 16, forward + backward of one convolution (ms,
XLA's own convolution -> this): 128 ch at 28 px 28.2 -> 24.2, 256 at 14 px 25.0 -> 17.3,
512 at 7 px 27.8 -> 20.7; 64 channels at 56 px gain nothing, so narrow convolutions are
left to XLA (benchmarks/RESULTS.md). The result equals XLA's to float32 rounding
(relative error ~1e-6: the transforms only add, halve and subtract).

All shapes are NHWC activations and HWIO kernels, padding 1 on every side.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array


def _tiles(size: int) -> int:
    """2x2 output tiles along a side of `size` outputs (the last one may hang over)."""
    return -(-size // 2)


def _even_odd(a: Array, axis: int) -> tuple[Array, Array]:
    """Entries 0, 2, 4, ... and 1, 3, 5, ... of an even-length axis."""
    shape = a.shape
    pairs = a.reshape(shape[:axis] + (shape[axis] // 2, 2) + shape[axis + 1:])
    return (lax.index_in_dim(pairs, 0, axis + 1, keepdims=False),
            lax.index_in_dim(pairs, 1, axis + 1, keepdims=False))


def _interleave(even: Array, odd: Array, axis: int) -> Array:
    """The inverse of `_even_odd`."""
    shape = even.shape
    return jnp.stack([even, odd], axis + 1).reshape(
        shape[:axis] + (2 * shape[axis],) + shape[axis + 1:])


def _pad_axis(a: Array, axis: int, before: int, after: int) -> Array:
    return jnp.pad(a, [(before, after) if i == axis else (0, 0) for i in range(a.ndim)])


def _b_transpose(a: Array, axis: int) -> list[Array]:
    """Bᵀ over the 4-windows at stride 2 of `axis` (2t + 2 entries): 4 arrays of t.

    Window t holds rows d0..d3 = a[2t .. 2t+3]; Bᵀ d = (d0 - d2, d1 + d2, d2 - d1, d1 - d3).
    """
    even, odd = _even_odd(a, axis)
    n = even.shape[axis]
    d0, d2 = lax.slice_in_dim(even, 0, n - 1, axis=axis), lax.slice_in_dim(even, 1, n, axis=axis)
    d1, d3 = lax.slice_in_dim(odd, 0, n - 1, axis=axis), lax.slice_in_dim(odd, 1, n, axis=axis)
    return [d0 - d2, d1 + d2, d2 - d1, d1 - d3]


def _b_transpose_adjoint(v: list[Array], axis: int) -> Array:
    """The adjoint of `_b_transpose`: 4 arrays of t entries -> one of 2t + 2 (overlaps add)."""
    v0, v1, v2, v3 = v
    d0, d1, d2, d3 = v0, v1 - v2 + v3, v1 + v2 - v0, -v3
    even = _pad_axis(d0, axis, 0, 1) + _pad_axis(d2, axis, 1, 0)
    odd = _pad_axis(d1, axis, 0, 1) + _pad_axis(d3, axis, 1, 0)
    return _interleave(even, odd, axis)


def _a_transpose(m: list[Array]) -> list[Array]:
    """Aᵀ: 4 transformed entries -> the 2 outputs of a tile."""
    return [m[0] + m[1] + m[2], m[1] - m[2] - m[3]]


def _a_transpose_adjoint(y: list[Array]) -> list[Array]:
    return [y[0], y[0] + y[1], y[0] - y[1], -y[1]]


def _g(w: list[Array]) -> list[Array]:
    """G: the 3 kernel taps along one axis -> 4 transformed entries."""
    return [w[0], 0.5 * (w[0] + w[1] + w[2]), 0.5 * (w[0] - w[1] + w[2]), w[2]]


def _g_adjoint(u: list[Array]) -> list[Array]:
    half_sum, half_diff = 0.5 * (u[1] + u[2]), 0.5 * (u[1] - u[2])
    return [u[0] + half_sum, half_diff, u[3] + half_sum]


def transform_input(x: Array) -> Array:
    """[N, H, W, C] -> Bᵀ d B of every 4x4 tile, [16, N, th, tw, C] (th = ceil(H/2))."""
    n, h, w, c = x.shape
    th, tw = _tiles(h), _tiles(w)
    padded = jnp.pad(x, ((0, 0), (1, 2 * th + 1 - h), (1, 2 * tw + 1 - w), (0, 0)))
    v = [_b_transpose(rows, 2) for rows in _b_transpose(padded, 1)]
    return jnp.stack([v[a][b] for a in range(4) for b in range(4)])


def transform_input_adjoint(v: Array, shape: tuple[int, ...]) -> Array:
    """The adjoint of `transform_input`: [16, N, th, tw, C] -> [N, H, W, C]."""
    h, w = shape[1:3]
    v = v.reshape(4, 4, *v.shape[1:])
    rows = [_b_transpose_adjoint([v[a, b] for b in range(4)], 2) for a in range(4)]
    return _b_transpose_adjoint(rows, 1)[:, 1:1 + h, 1:1 + w, :]


def transform_kernel(w: Array) -> Array:
    """[3, 3, Cin, Cout] -> G g Gᵀ, [16, Cin, Cout]."""
    u = [_g([row[j] for j in range(3)]) for row in _g([w[i] for i in range(3)])]
    return jnp.stack([u[a][b] for a in range(4) for b in range(4)])


def transform_kernel_adjoint(u: Array) -> Array:
    """The adjoint of `transform_kernel`: [16, Cin, Cout] -> [3, 3, Cin, Cout]."""
    u = u.reshape(4, 4, *u.shape[1:])
    rows = [_g_adjoint([u[a, b] for b in range(4)]) for a in range(4)]      # [a][j]
    taps = [_g_adjoint([rows[a][j] for a in range(4)]) for j in range(3)]   # [j][i]
    return jnp.stack([jnp.stack([taps[j][i] for j in range(3)]) for i in range(3)])


def transform_output(m: Array, h: int, w: int) -> Array:
    """Aᵀ M A of every tile: [16, N, th, tw, Cout] -> [N, H, W, Cout]."""
    m = m.reshape(4, 4, *m.shape[1:])
    cols = [_a_transpose([m[a, b] for a in range(4)]) for b in range(4)]          # [b][r]
    rows = [_interleave(*_a_transpose([cols[b][r] for b in range(4)]), 2) for r in range(2)]
    return _interleave(*rows, 1)[:, :h, :w, :]


def transform_output_adjoint(g: Array) -> Array:
    """The adjoint of `transform_output`: [N, H, W, Cout] -> [16, N, th, tw, Cout]."""
    h, w = g.shape[1:3]
    th, tw = _tiles(h), _tiles(w)
    g = jnp.pad(g, ((0, 0), (0, 2 * th - h), (0, 2 * tw - w), (0, 0)))
    tiles = [_even_odd(rows, 2) for rows in _even_odd(g, 1)]                      # [r][s]
    cols = [_a_transpose_adjoint([tiles[r][s] for s in range(2)]) for r in range(2)]  # [r][b]
    m = [_a_transpose_adjoint([cols[r][b] for r in range(2)]) for b in range(4)]      # [b][a]
    return jnp.stack([m[b][a] for a in range(4) for b in range(4)])


@jax.custom_vjp
def conv3x3(x: Array, w: Array) -> Array:
    """[N, H, W, Cin] * [3, 3, Cin, Cout] -> [N, H, W, Cout]: stride 1, padding 1, as
    `lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC",
    "HWIO", "NHWC"))` computes it."""
    return _conv3x3_fwd(x, w)[0]


def _conv3x3_fwd(x: Array, w: Array):
    v, u = transform_input(x), transform_kernel(w)
    m = jnp.einsum("tnhwc,tco->tnhwo", v, u)
    return transform_output(m, *x.shape[1:3]), (v, u, x.shape)


def _conv3x3_bwd(residuals, g: Array):
    v, u, shape = residuals
    dm = transform_output_adjoint(g)
    dv = jnp.einsum("tnhwo,tco->tnhwc", dm, u)
    du = jnp.einsum("tnhwc,tnhwo->tco", v, dm)
    return transform_input_adjoint(dv, shape), transform_kernel_adjoint(du)


conv3x3.defvjp(_conv3x3_fwd, _conv3x3_bwd)
