"""Winograd F(m x m, 3x3) convolutions against XLA's own, values and gradients."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from ferjax import steps
from ferjax.models import layers, winograd

NHWC = ("NHWC", "HWIO", "NHWC")
# float32 rounding: the m = 4 transforms scale by up to 8 and 1/24 (module docstring).
TOLERANCE = {2: dict(rtol=1e-5, atol=1e-5), 4: dict(rtol=1e-4, atol=5e-5)}


def lax_conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC)


def random_conv_inputs(n, h, w, cin, cout, seed=0):
    kx, kw, kg = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(kx, (n, h, w, cin))
    kernel = jax.random.normal(kw, (3, 3, cin, cout)) * (2.0 / (9 * cin)) ** 0.5
    g = jax.random.normal(kg, (n, h, w, cout))
    return x, kernel, g


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("h,w", [(8, 8), (7, 9), (1, 1), (2, 5), (6, 3)])
def test_winograd_conv_and_its_gradients_match_lax(m, h, w):
    """Sides that are and are not multiples of the tile (a last tile that hangs over), and
    a single pixel."""
    x, kernel, g = random_conv_inputs(2, h, w, 5, 6)
    y, vjp = jax.vjp(functools.partial(winograd.conv3x3, m=m), x, kernel)
    y_ref, vjp_ref = jax.vjp(lax_conv, x, kernel)
    np.testing.assert_allclose(y, y_ref, **TOLERANCE[m])
    for got, want in zip(vjp(g), vjp_ref(g)):
        np.testing.assert_allclose(got, want, **TOLERANCE[m])


@pytest.mark.parametrize("m", [2, 4])
def test_winograd_on_a_map_of_ones_by_hand(m):
    """One channel, a 3x3 map of ones and the kernel of ones: each output counts the ones
    in its 3x3 window of the zero-padded map (4 at a corner, 6 at an edge, 9 inside)."""
    y = winograd.conv3x3(jnp.ones((1, 3, 3, 1)), jnp.ones((3, 3, 1, 1)), m)
    np.testing.assert_allclose(y[0, :, :, 0], [[4, 6, 4], [6, 9, 6], [4, 6, 4]], rtol=1e-6)


@pytest.mark.parametrize("m", [2, 4])
def test_transforms_are_adjoint_pairs(m):
    """<T a, b> == <a, T* b> for the input, kernel and output transforms (the backward pass
    is written by hand, so this is what keeps it right)."""
    keys = jax.random.split(jax.random.key(3), 6)
    shape = (2, 5, 6, 3)
    x = jax.random.normal(keys[0], shape)
    v = jax.random.normal(keys[1], winograd.transform_input(x, m).shape)
    np.testing.assert_allclose(jnp.vdot(winograd.transform_input(x, m), v),
                               jnp.vdot(x, winograd.transform_input_adjoint(v, shape, m)),
                               rtol=1e-5)
    w = jax.random.normal(keys[2], (3, 3, 3, 4))
    u = jax.random.normal(keys[3], ((m + 2) ** 2, 3, 4))
    np.testing.assert_allclose(jnp.vdot(winograd.transform_kernel(w, m), u),
                               jnp.vdot(w, winograd.transform_kernel_adjoint(u, m)), rtol=1e-5)
    p = jax.random.normal(keys[4], ((m + 2) ** 2, 2, -(-5 // m), -(-6 // m), 4))
    y = jax.random.normal(keys[5], (2, 5, 6, 4))
    np.testing.assert_allclose(jnp.vdot(winograd.transform_output(p, 5, 6, m), y),
                               jnp.vdot(p, winograd.transform_output_adjoint(y, m)), rtol=1e-5)


def test_cpu_convolutions_take_the_tile_choose_tile_gives(monkeypatch):
    """layers.conv_general_dilated: m = 4 on large maps, m = 2 on wide small ones, XLA's
    own convolution for narrow ones, strided ones, other kernels and bfloat16."""
    tiles = []
    monkeypatch.setattr(winograd, "conv3x3", lambda x, w, m: tiles.append(m) or lax_conv(x, w))

    def route(side, cin, cout, stride=1, kernel=3, dtype=jnp.float32):
        tiles.clear()
        x = jax.ShapeDtypeStruct((2, side, side, cin), dtype)
        w = jax.ShapeDtypeStruct((kernel, kernel, cin, cout), dtype)
        pad = kernel // 2
        jax.eval_shape(lambda a, b: layers.conv_general_dilated(
            a, b, (stride, stride), ((pad, pad), (pad, pad)), dimension_numbers=NHWC), x, w)
        return tiles[0] if tiles else 0

    big, wide, large_map_wide = (winograd.LARGE_MAP, winograd.WIDE_CHANNELS,
                                 winograd.LARGE_MAP_CHANNELS)
    assert route(big, large_map_wide, large_map_wide) == 4
    assert route(big - 1, wide, wide) == 2
    assert route(big, large_map_wide // 2, large_map_wide // 2) == 0
    assert route(big - 1, wide // 2, wide) == 0
    assert route(big, wide, wide, stride=2) == 0
    assert route(big, wide, wide, kernel=1) == 0
    assert route(big, wide, wide, dtype=jnp.bfloat16) == 0


@pytest.mark.parametrize("axis_type", ["auto", "explicit"])
def test_winograd_step_is_the_same_sharded_over_four_devices(axis_type):
    """On training's mesh (Auto axes) and on an Explicit one, where the kernel gradient's
    sum over the sharded batch needs its output sharding spelled out."""
    x, kernel, g = random_conv_inputs(8, 6, 6, 4, 4, seed=1)

    def loss(x, w):
        return jnp.sum(winograd.conv3x3(x, w, 2) * g)

    single = jax.jit(jax.value_and_grad(loss, (0, 1)))(x, kernel)
    mesh = (steps.make_mesh(jax.devices()[:4]) if axis_type == "auto" else
            jax.make_mesh((4,), ("data",), devices=jax.devices()[:4],
                          axis_types=(jax.sharding.AxisType.Explicit,)))
    with jax.set_mesh(mesh):
        xs = jax.device_put(x, NamedSharding(mesh, P("data")))
        sharded = jax.jit(jax.value_and_grad(loss, (0, 1)))(xs, kernel)
    for got, want in zip(jax.tree.leaves(sharded), jax.tree.leaves(single)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
