"""Winograd F(2x2, 3x3) convolutions against XLA's own, values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from ferjax import train
from ferjax.models import layers, winograd

NHWC = ("NHWC", "HWIO", "NHWC")


def lax_conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC)


def random_conv_inputs(n, h, w, cin, cout, seed=0):
    kx, kw, kg = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(kx, (n, h, w, cin))
    kernel = jax.random.normal(kw, (3, 3, cin, cout)) * (2.0 / (9 * cin)) ** 0.5
    g = jax.random.normal(kg, (n, h, w, cout))
    return x, kernel, g


@pytest.mark.parametrize("h,w", [(8, 8), (7, 7), (1, 1), (2, 5), (6, 3)])
def test_winograd_conv_and_its_gradients_match_lax(h, w):
    """Even and odd sides (a last tile that hangs over), and a single pixel."""
    x, kernel, g = random_conv_inputs(2, h, w, 5, 6)
    y, vjp = jax.vjp(winograd.conv3x3, x, kernel)
    y_ref, vjp_ref = jax.vjp(lax_conv, x, kernel)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(vjp(g), vjp_ref(g)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_winograd_on_a_single_tile_by_hand():
    """One channel, a 2x2 map of ones, the kernel of ones: each output sums the 3x3 window
    of the zero-padded map, which holds all four ones."""
    y = winograd.conv3x3(jnp.ones((1, 2, 2, 1)), jnp.ones((3, 3, 1, 1)))
    np.testing.assert_allclose(y[0, :, :, 0], [[4.0, 4.0], [4.0, 4.0]], rtol=1e-6)


def test_transforms_are_adjoint_pairs():
    """<T a, b> == <a, T* b> for the input, kernel and output transforms (the backward pass
    is written by hand, so this is what keeps it right)."""
    keys = jax.random.split(jax.random.key(3), 6)
    shape = (2, 5, 6, 3)
    x = jax.random.normal(keys[0], shape)
    v = jax.random.normal(keys[1], winograd.transform_input(x).shape)
    np.testing.assert_allclose(jnp.vdot(winograd.transform_input(x), v),
                               jnp.vdot(x, winograd.transform_input_adjoint(v, shape)),
                               rtol=1e-5)
    w = jax.random.normal(keys[2], (3, 3, 3, 4))
    u = jax.random.normal(keys[3], (16, 3, 4))
    np.testing.assert_allclose(jnp.vdot(winograd.transform_kernel(w), u),
                               jnp.vdot(w, winograd.transform_kernel_adjoint(u)), rtol=1e-5)
    m = jax.random.normal(keys[4], (16, 2, 3, 3, 4))
    y = jax.random.normal(keys[5], (2, 5, 6, 4))
    np.testing.assert_allclose(jnp.vdot(winograd.transform_output(m, 5, 6), y),
                               jnp.vdot(m, winograd.transform_output_adjoint(y)), rtol=1e-5)


def test_wide_cpu_convolutions_take_the_winograd_path():
    """layers.conv_general_dilated sends 3x3 stride-1 convolutions with at least
    WINOGRAD_MIN_CHANNELS in and out to Winograd on CPU, and nothing else."""
    def route(cin, cout, stride=1, kernel=3):
        x = jax.ShapeDtypeStruct((2, 8, 8, cin), jnp.float32)
        w = jax.ShapeDtypeStruct((kernel, kernel, cin, cout), jnp.float32)
        pad = kernel // 2
        return str(jax.make_jaxpr(lambda a, b: layers.conv_general_dilated(
            a, b, (stride, stride), ((pad, pad), (pad, pad)), dimension_numbers=NHWC))(x, w))

    wide = layers.WINOGRAD_MIN_CHANNELS
    assert "custom_vjp" in route(wide, wide)
    assert "custom_vjp" not in route(wide // 2, wide)
    assert "custom_vjp" not in route(wide, wide, stride=2)
    assert "custom_vjp" not in route(wide, wide, kernel=1)


def test_winograd_step_is_the_same_sharded_over_four_devices():
    x, kernel, g = random_conv_inputs(8, 6, 6, 4, 4, seed=1)

    def loss(x, w):
        return jnp.sum(winograd.conv3x3(x, w) * g)

    single = jax.jit(jax.value_and_grad(loss, (0, 1)))(x, kernel)
    mesh = train.make_mesh(jax.devices()[:4])   # as training shards its batches
    xs = jax.device_put(x, NamedSharding(mesh, P("data")))
    sharded = jax.jit(jax.value_and_grad(loss, (0, 1)))(xs, kernel)
    for got, want in zip(jax.tree.leaves(sharded), jax.tree.leaves(single)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
