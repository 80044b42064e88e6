"""On-device augmentations: the noise they draw and the two branches of RUL's flip-or-noise."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ferjax.data import augment


@pytest.mark.parametrize("shape", [(5, 7, 3), (2, 3), (11,)])
def test_flat_normal_draw_equals_jax_normal_of_the_shape(shape):
    key = jax.random.key(3)
    np.testing.assert_array_equal(augment._normal(key, shape),
                                  jax.random.normal(key, shape))
    assert augment._normal(key, shape, jnp.bfloat16).dtype == jnp.bfloat16


def test_random_fill_is_standard_normal_noise_of_the_image_shape():
    x = jnp.zeros((6, 4, 3))
    key = jax.random.key(1)
    np.testing.assert_array_equal(augment._fill(key, x, "random"),
                                  jax.random.normal(key, x.shape))


def test_flip_or_noise_gives_the_image_its_flip_or_clipped_noise():
    x = jax.random.uniform(jax.random.key(0), (8, 6, 3))
    sigma = math.sqrt(30.0) / 255.0
    seen = set()
    for i in range(40):
        key = jax.random.key(i)
        out = augment.flip_or_noise(key, x, {})
        noise = jax.random.normal(jax.random.split(key, 3)[2], x.shape)
        if jnp.array_equal(out, x):
            seen.add("unchanged")
        elif jnp.array_equal(out, x[:, ::-1]):
            seen.add("flipped")
        else:
            np.testing.assert_allclose(out, jnp.clip(x + sigma * noise, 0.0, 1.0), atol=1e-7)
            seen.add("noise")
        np.testing.assert_array_equal(augment.flip_or_noise(key, x, {"prob": 0.0}), x)
    assert seen == {"unchanged", "flipped", "noise"}
