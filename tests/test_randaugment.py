"""RandAugment on the device against Pillow, which timm's RandAugment calls op by op."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from benchmarks.rand_augment import pil_op
from ferjax.data import augment, randaugment


def _face_like(seed: int, side: int = 40) -> np.ndarray:
    """Smooth structure plus noise, so resampling and histograms are not degenerate."""
    rng = np.random.default_rng(seed)
    ii, jj = np.mgrid[:side, :side] / side
    base = np.stack([np.sin(5 * ii + c) * np.cos(3 * jj - c) for c in range(3)], -1)
    img = 110 + 90 * base + rng.normal(0, 12, base.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


_apply = jax.jit(randaugment.apply_op, static_argnames=("increasing", "interpolation"))


@pytest.mark.parametrize("name", randaugment.OPS)
def test_each_op_matches_pillow(name):
    """Every op at two magnitudes and both signs: the grey levels Pillow gives, up to one
    level in the odd pixel where PIL rounds in double precision and we in float32."""
    op = randaugment.OPS.index(name)
    for seed, (level, sign) in enumerate([(9.3, 1.0), (9.3, -1.0), (4.1, 1.0)]):
        img = _face_like(seed)
        want = np.asarray(pil_op(Image.fromarray(img), name, level, sign)).astype(int)
        got = np.asarray(_apply(jnp.asarray(img, jnp.float32), op, level, sign))
        assert np.array_equal(got, np.round(got)), "grey levels must stay integers"
        diff = np.abs(got.astype(int) - want)
        assert diff.max() <= 1, (name, level, sign, diff.max())
        assert (diff == 0).mean() > 0.999, (name, level, sign, (diff == 0).mean())


@pytest.mark.parametrize("level", [7.7, 8.0])
def test_bilinear_resampling_matches_pillow_too(level):
    """At level 8 a shear of 0.24 lands every 25th column exactly on pixel centres, where
    Pillow's double arithmetic may fall a hair short and truncate one level lower; the
    device code, on a grid of 1/16384 pixel, reads the pixel itself."""
    img = _face_like(7)
    for name in ("rotate", "shear_y"):
        want = np.asarray(pil_op(Image.fromarray(img), name, level, -1.0, Image.BILINEAR))
        got = np.asarray(_apply(jnp.asarray(img, jnp.float32), randaugment.OPS.index(name),
                                level, -1.0, interpolation="bilinear"))
        diff = np.abs(got.astype(int) - want.astype(int))
        assert diff.max() <= 1
        assert (diff == 0).mean() > (0.999 if level == 7.7 else 0.97)


@pytest.mark.parametrize("name", ["posterize", "solarize", "contrast"])
def test_the_original_level_maps_without_inc1(name):
    img = _face_like(8)
    want = np.asarray(pil_op(Image.fromarray(img), name, 6.3, -1.0, increasing=False))
    got = _apply(jnp.asarray(img, jnp.float32), randaugment.OPS.index(name), 6.3, -1.0,
                 increasing=False)
    np.testing.assert_array_equal(got, want)


def test_ops_that_are_not_chosen_leave_the_image_exactly():
    """Each op is built from three stages whose other members run as identities; at
    magnitude 0 the signed ops are identities too."""
    img = jnp.asarray(_face_like(3), jnp.float32)
    for name in ("rotate", "shear_x", "translate_y", "brightness", "color", "solarize_add"):
        out = _apply(img, randaugment.OPS.index(name), 0.0, 1.0)
        np.testing.assert_array_equal(out, img)


def test_rand_augment_layers_follow_prob_and_keep_the_range():
    x = jnp.asarray(_face_like(4, 24), jnp.float32) / 255.0
    grey_levels = np.round(np.asarray(x) * 255) / 255
    # prob is only compared with a draw, so one compile serves both probabilities.
    run = jax.jit(jax.vmap(lambda k, prob: randaugment.rand_augment(k, x, {"prob": prob})))
    probs = jnp.array([0.5] * 64 + [0.0] * 8)
    out = np.asarray(run(jax.random.split(jax.random.key(0), 72), probs))
    assert out.min() >= 0.0 and out.max() <= 1.0
    unchanged = np.mean([np.allclose(o, grey_levels) for o in out[:64]])
    # Two layers that each act with probability 1/2 (and invert, say, always changes the
    # image): about a quarter come through untouched.
    assert 0.1 < unchanged < 0.45
    for never in out[64:]:
        np.testing.assert_allclose(never, grey_levels)


def test_rand_augment_is_a_registered_augmentation_in_the_batch_ops():
    images = jnp.asarray(np.stack([_face_like(i, 16) for i in range(4)]))
    ops = augment.parse_ops({"ops": ("flip", "rand_augment", "normalize"),
                             "rand_augment": {"magnitude": 9.0, "fill": (128, 128, 128)}})
    run = jax.jit(lambda key: augment.augment_batch(key, images, ops, size=16))
    out, other = run(jax.random.key(0)), run(jax.random.key(1))
    assert out.shape == (4, 16, 16, 3) and bool(jnp.all(jnp.isfinite(out)))
    assert float(jnp.abs(out - other).max()) > 0.0


def test_unknown_interpolation_is_named():
    with pytest.raises(ValueError, match=r"rand_augment\.interpolation is 'lanczos'"):
        randaugment.rand_augment(jax.random.key(0), jnp.zeros((8, 8, 3)),
                                 {"interpolation": "lanczos"})
