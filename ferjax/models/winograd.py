"""3x3 stride-1 convolutions as Winograd F(m x m, 3x3) (Lavin & Gray 2016), for XLA:CPU.

Each m x m output tile comes from an (m+2) x (m+2) input tile d and the 3x3 kernel g as

    Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A,

so a convolution becomes (m+2)² independent matmuls [tiles, Cin] @ [Cin, Cout], one per
position in the transformed tile: 2.25x (m = 2) or 4x (m = 4) fewer multiplications than
the direct form. The transforms are sums of strided views with small constant weights. The
backward pass is written out the same way: the output gradient goes through Aᵀ's adjoint,
two batched matmuls give the gradients of the transformed input and kernel, and the
adjoints of Bᵀ and G take them back.

m = 4 reads and writes less (its transformed input is 2.25x the input, m = 2's is 4x) but
rounds more: relative error ~1e-5 in float32 against ~1e-6 for m = 2 (tests/test_winograd.py).
Which convolutions use which, and the measurements behind it: `choose_tile`.

Shapes: NHWC activations, HWIO kernels, padding 1 on every side.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array

# Bᵀ ((m+2) x (m+2)), G ((m+2) x 3) and Aᵀ (m x (m+2)) for output tiles of m x m, with
# interpolation points 0, ±1 (m = 2) and 0, ±1, ±2 (m = 4), as in Lavin & Gray.
MATRICES = {
    2: dict(bt=((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1)),
            g=((1, 0, 0), (1 / 2, 1 / 2, 1 / 2), (1 / 2, -1 / 2, 1 / 2), (0, 0, 1)),
            at=((1, 1, 1, 0), (0, 1, -1, -1))),
    4: dict(bt=((4, 0, -5, 0, 1, 0), (0, -4, -4, 1, 1, 0), (0, 4, -4, -1, 1, 0),
                (0, -2, -1, 2, 1, 0), (0, 2, -1, -2, 1, 0), (0, 4, 0, -5, 0, 1)),
            g=((1 / 4, 0, 0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6),
               (1 / 24, 1 / 12, 1 / 6), (1 / 24, -1 / 12, 1 / 6), (0, 0, 1)),
            at=((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0),
                (0, 1, -1, 8, -8, 1))),
}

# Maps of at least this side take m = 4 from this many channels in and out; smaller ones
# take m = 2 from WIDE_CHANNELS.
LARGE_MAP, LARGE_MAP_CHANNELS, WIDE_CHANNELS = 14, 64, 128


def choose_tile(side: int, cin: int, cout: int) -> int:
    """The output tile m for a 3x3 stride-1 convolution on CPU, or 0 for XLA's own.

    Measured on a 2-core AMD EPYC (benchmarks/RESULTS.md). One convolution, batch 16,
    forward + backward in ms (XLA's convolution / m = 2 / m = 4): 64 ch at 56 px 32.8 /
    39.3 / 27.2, 128 at 28 px 28.9 / 24.4 / 16.9, 256 at 14 px 24.0 / 16.4 / 16.2, 512 at
    7 px 26.0 / 19.7 / 21.2. ResNet-18's train step, one process, medians of 8 rounds: at
    224 px, batch 16, 569 ms with XLA's convolutions, 506 with this rule (m = 4 on every
    map would be 500, within the rounds' spread); at 64 px, batch 64, 186 -> 178 ms (m = 4
    everywhere: 185). Narrow convolutions on small maps have too little work per
    transformed element to pay for the transforms.
    """
    channels = min(cin, cout)
    if side >= LARGE_MAP and channels >= LARGE_MAP_CHANNELS:
        return 4
    if channels >= WIDE_CHANNELS:
        return 2
    return 0


def _combine(matrix, items: list[Array]) -> list[Array]:
    """[Σ_i matrix[k][i] · items[i] for each row k], skipping zero weights."""
    out = []
    for row in matrix:
        total = None
        for weight, item in zip(row, items):
            if weight == 0:
                continue
            term = item if weight == 1 else -item if weight == -1 else item * np.float32(weight)
            total = term if total is None else total + term
        out.append(jnp.zeros_like(items[0]) if total is None else total)
    return out


def _transposed(matrix):
    return tuple(zip(*matrix))


def _phases(a: Array, axis: int, m: int) -> list[Array]:
    """Entries p, p + m, p + 2m, ... of `axis` (its length a multiple of m), for p < m."""
    shape = a.shape
    blocks = a.reshape(shape[:axis] + (shape[axis] // m, m) + shape[axis + 1:])
    return [lax.index_in_dim(blocks, p, axis + 1, keepdims=False) for p in range(m)]


def _interleave(parts: list[Array], axis: int) -> Array:
    """The inverse of `_phases`."""
    shape = parts[0].shape
    return jnp.stack(parts, axis + 1).reshape(
        shape[:axis] + (len(parts) * shape[axis],) + shape[axis + 1:])


def _pad_axis(a: Array, axis: int, before: int, after: int) -> Array:
    return jnp.pad(a, [(before, after) if i == axis else (0, 0) for i in range(a.ndim)])


def _windows(a: Array, axis: int, m: int) -> list[Array]:
    """The m+2 rows of the windows at stride m along `axis` (m·(t+1) entries): row i is
    a[m·t + i] for t < t_count, one array per i."""
    phases = _phases(a, axis, m)
    count = phases[0].shape[axis] - 1
    return [lax.slice_in_dim(phases[i % m], i // m, i // m + count, axis=axis)
            for i in range(m + 2)]


def _windows_adjoint(rows: list[Array], axis: int, m: int) -> Array:
    """The adjoint of `_windows`: overlapping rows add up."""
    phases: list = [None] * m
    for i, row in enumerate(rows):
        term = _pad_axis(row, axis, i // m, 1 - i // m)
        phases[i % m] = term if phases[i % m] is None else phases[i % m] + term
    return _interleave(phases, axis)


def _tiles(size: int, m: int) -> int:
    """Output tiles along a side of `size` outputs (the last one may hang over)."""
    return -(-size // m)


def transform_input(x: Array, m: int) -> Array:
    """[N, H, W, C] -> Bᵀ d B of every tile, [(m+2)², N, th, tw, C] (th = ceil(H/m))."""
    bt = MATRICES[m]["bt"]
    _, h, w, _ = x.shape
    th, tw = _tiles(h, m), _tiles(w, m)
    padded = jnp.pad(x, ((0, 0), (1, m * (th + 1) - h - 1), (1, m * (tw + 1) - w - 1), (0, 0)))
    rows = _combine(bt, _windows(padded, 1, m))
    v = [_combine(bt, _windows(row, 2, m)) for row in rows]
    return jnp.stack([vb for va in v for vb in va])


def transform_input_adjoint(v: Array, shape: tuple[int, ...], m: int) -> Array:
    """The adjoint of `transform_input`: [(m+2)², N, th, tw, C] -> [N, H, W, C]."""
    b = _transposed(MATRICES[m]["bt"])
    size = m + 2
    h, w = shape[1:3]
    v = v.reshape(size, size, *v.shape[1:])
    rows = [_windows_adjoint(_combine(b, [v[a, j] for j in range(size)]), 2, m)
            for a in range(size)]
    return _windows_adjoint(_combine(b, rows), 1, m)[:, 1:1 + h, 1:1 + w, :]


def transform_kernel(w: Array, m: int) -> Array:
    """[3, 3, Cin, Cout] -> G g Gᵀ, [(m+2)², Cin, Cout]."""
    g = MATRICES[m]["g"]
    u = [_combine(g, [row[j] for j in range(3)]) for row in _combine(g, [w[i] for i in range(3)])]
    return jnp.stack([ub for ua in u for ub in ua])


def transform_kernel_adjoint(u: Array, m: int) -> Array:
    """The adjoint of `transform_kernel`: [(m+2)², Cin, Cout] -> [3, 3, Cin, Cout]."""
    gt = _transposed(MATRICES[m]["g"])
    size = m + 2
    u = u.reshape(size, size, *u.shape[1:])
    rows = [_combine(gt, [u[a, b] for b in range(size)]) for a in range(size)]      # [a][j]
    taps = [_combine(gt, [rows[a][j] for a in range(size)]) for j in range(3)]      # [j][i]
    return jnp.stack([jnp.stack([taps[j][i] for j in range(3)]) for i in range(3)])


def transform_output(p: Array, h: int, w: int, m: int) -> Array:
    """Aᵀ P A of every tile: [(m+2)², N, th, tw, Cout] -> [N, H, W, Cout]."""
    at = MATRICES[m]["at"]
    size = m + 2
    p = p.reshape(size, size, *p.shape[1:])
    cols = [_combine(at, [p[a, b] for a in range(size)]) for b in range(size)]       # [b][r]
    rows = [_interleave(_combine(at, [cols[b][r] for b in range(size)]), 2) for r in range(m)]
    return _interleave(rows, 1)[:, :h, :w, :]


def transform_output_adjoint(g: Array, m: int) -> Array:
    """The adjoint of `transform_output`: [N, H, W, Cout] -> [(m+2)², N, th, tw, Cout]."""
    a = _transposed(MATRICES[m]["at"])
    size = m + 2
    h, w = g.shape[1:3]
    g = jnp.pad(g, ((0, 0), (0, m * _tiles(h, m) - h), (0, m * _tiles(w, m) - w), (0, 0)))
    tiles = [_phases(row, 2, m) for row in _phases(g, 1, m)]                          # [r][s]
    cols = [_combine(a, [tiles[r][s] for s in range(m)]) for r in range(m)]          # [r][b]
    p = [_combine(a, [cols[r][b] for r in range(m)]) for b in range(size)]           # [b][a]
    return jnp.stack([p[b][i] for i in range(size) for b in range(size)])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv3x3(x: Array, w: Array, m: int) -> Array:
    """[N, H, W, Cin] * [3, 3, Cin, Cout] -> [N, H, W, Cout] with output tiles of m x m
    (2 or 4): stride 1, padding 1, what `lax.conv_general_dilated(x, w, (1, 1), ((1, 1),
    (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))` computes."""
    return _conv3x3_fwd(x, w, m)[0]


def _conv3x3_fwd(x: Array, w: Array, m: int):
    v, u = transform_input(x, m), transform_kernel(w, m)
    p = jnp.einsum("tnhwc,tco->tnhwo", v, u)
    return transform_output(p, *x.shape[1:3], m), (v, u, x.shape)


def _conv3x3_bwd(m: int, residuals, g: Array):
    v, u, shape = residuals
    dp = transform_output_adjoint(g, m)
    dv = jnp.einsum("tnhwo,tco->tnhwc", dp, u)
    # The sum over the batch and the tiles, flattened into one axis first: with three
    # contracting axes XLA:CPU ordered them (h, n, w) and copied both operands into that
    # order, where one transposed copy of v suffices. Under an explicit-axes mesh the
    # kernel's gradient takes the kernel's sharding (replicated), which jax does not infer
    # from a sharded contraction.
    positions = v.shape[0]
    du = jnp.einsum("tkc,tko->tco", v.reshape(positions, -1, v.shape[-1]),
                    dp.reshape(positions, -1, dp.shape[-1]),
                    out_sharding=jax.typeof(u).sharding)
    return transform_input_adjoint(dv, shape, m), transform_kernel_adjoint(du, m)


conv3x3.defvjp(_conv3x3_fwd, _conv3x3_bwd)
