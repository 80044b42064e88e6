"""On-device augmentations: the noise they draw, RUL's flip-or-noise, resizing, warps, color
jitter, and what every registered op keeps."""

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


def _pil_resize(img: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image
    return np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))


@pytest.mark.parametrize("side,size", [(20, 45), (48, 96), (45, 20), (30, 17)])
def test_device_resize_agrees_with_the_host_and_pil_within_rounding(side, size):
    """The step's resize of host batches gives what the host's (and PIL's, the reference
    code's) bilinear resize gives, enlarging or shrinking, up to their uint8 rounding."""
    from ferjax.data import pipeline
    img = np.random.default_rng(side).integers(0, 256, (side, side, 3), dtype=np.uint8)
    on_device = np.asarray(augment.resize_batch(jnp.asarray(img[None], jnp.float32), size))[0]
    assert on_device.shape == (size, size, 3)
    for host in (pipeline.resize(img, size), _pil_resize(img, size)):
        np.testing.assert_allclose(on_device, host, atol=1.01)


@pytest.mark.parametrize("side,size", [(100, 112), (45, 20)])
def test_bicubic_resize_gives_pillows_grey_levels_on_device_and_host(side, size):
    """MEK's training resize (timm: Pillow's bicubic), on noise, where the cubic's overshoot
    and Pillow's uint8 steps matter most: the step's within one grey level and >99.9 %
    equal; the host's is Pillow's (OpenCV's bicubic has another kernel)."""
    from PIL import Image

    from ferjax.data import pipeline
    img = np.random.default_rng(side).integers(0, 256, (side, side, 3), dtype=np.uint8)
    pil = np.asarray(Image.fromarray(img).resize((size, size), Image.BICUBIC)).astype(int)
    on_device = augment.resize_batch(jnp.asarray(img[None], jnp.float32) / 255, size, "bicubic")
    on_device = np.round(np.asarray(on_device)[0] * 255).astype(int)
    assert np.abs(on_device - pil).max() <= 1 and np.mean(on_device == pil) > 0.999
    np.testing.assert_array_equal(pipeline.resize(img, size, "bicubic"), pil)
    with pytest.raises(ValueError, match="'nearest'"):
        augment.resize_batch(jnp.zeros((1, 4, 4, 3)), 8, "nearest")
    with pytest.raises(ValueError, match="'nearest'"):
        pipeline.resize(img, size, "nearest")
    # Every method the config accepts (the device's list) has a host resize (Pillow's).
    assert set(pipeline._PIL_FILTERS) == set(augment.RESIZE_METHODS)


def test_opencv_aliases_when_shrinking_so_the_host_does_not_use_it():
    import cv2
    img = np.random.default_rng(0).integers(0, 256, (45, 45, 3), dtype=np.uint8)
    aliased = cv2.resize(img, (20, 20), interpolation=cv2.INTER_LINEAR).astype(int)
    assert np.abs(aliased - _pil_resize(img, 20)).max() > 30


def test_augment_batch_resizes_to_the_model_side_first():
    images = jnp.asarray(np.random.default_rng(1).integers(0, 256, (3, 10, 10, 3), np.uint8))
    ops = (("normalize", (("mean", (0.0, 0.0, 0.0)), ("std", (1.0, 1.0, 1.0)))),)
    out = augment.augment_batch(jax.random.key(0), images, ops, size=16)
    assert out.shape == (3, 16, 16, 3)
    np.testing.assert_allclose(out, augment.resize_batch(images / 255.0, 16), atol=1e-6)
    same = augment.augment_batch(jax.random.key(0), images, ops, size=10)
    np.testing.assert_allclose(same, images / 255.0, atol=1e-6)


def test_augment_batch_is_each_op_on_each_example_in_turn():
    """The batch-wide form (one vmap per op, the warp's input and output fenced on CPU)
    gives what the ops give applied one example at a time."""
    import pathlib

    from ferjax.presets import load_config_file
    config = load_config_file(pathlib.Path(__file__).parents[1] / "configs" / "rafdb.py",
                              "rlrcnet")
    ops = augment.parse_ops(config.augment)
    assert "affine" in dict(ops) and "affine" in augment.WARPS
    images = jnp.asarray(np.random.default_rng(2).integers(0, 256, (3, 20, 20, 3), np.uint8))
    key = jax.random.key(7)
    batched = augment.augment_batch(key, images, ops)
    for k, img, got in zip(jax.random.split(key, 3), images, batched):
        want = img.astype(jnp.float32) / 255.0
        for i, (name, params) in enumerate(ops):
            want = augment.AUGMENTATIONS.get(name)(jax.random.fold_in(k, i), want, dict(params))
        np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("degrees,scale,shift,fill", [(10.0, 1.0, (0.0, 0.0), 0.0),
                                                      (-33.0, 0.8, (3.5, -7.25), 0.5),
                                                      (90.0, 1.3, (-2.0, 1.0), -1.0)])
def test_warp_is_map_coordinates_per_channel(degrees, scale, shift, fill):
    """The shared-index warp equals scipy-style bilinear resampling of each channel, with
    `fill` wherever a tap falls outside (rotations, zooms, shifts off the edge)."""
    from jax.scipy import ndimage
    x = jax.random.uniform(jax.random.key(0), (13, 17, 3))
    angle = math.radians(degrees)
    matrix = jnp.array([[math.cos(angle), -math.sin(angle)],
                        [math.sin(angle), math.cos(angle)]]) / scale
    offset = jnp.array([6.0, 8.0]) - matrix @ jnp.array([6.0, 8.0]) + jnp.array(shift)
    ii, jj = jnp.meshgrid(jnp.arange(13.0), jnp.arange(17.0), indexing="ij")
    coords = [matrix[0, 0] * ii + matrix[0, 1] * jj + offset[0],
              matrix[1, 0] * ii + matrix[1, 1] * jj + offset[1]]
    want = jnp.stack([ndimage.map_coordinates(x[..., c], coords, order=1, mode="constant",
                                              cval=fill) for c in range(3)], axis=-1)
    got = augment._warp(x, matrix, offset, fill)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert bool(jnp.any(got == fill))  # the check covers pixels whose taps all fall outside


def test_every_augmentation_keeps_the_image_shape_and_is_a_function_of_its_key():
    """Each registered op, with its default parameters, on a (24, 24, 3) image in [0, 1]:
    same shape and dtype, finite, the same output for the same key."""
    image = jax.random.uniform(jax.random.key(0), (24, 24, 3))
    for name in augment.AUGMENTATIONS.names():
        op = augment.AUGMENTATIONS.get(name)
        out = op(jax.random.key(1), image, {})
        assert out.shape == image.shape and out.dtype == image.dtype, name
        assert bool(jnp.all(jnp.isfinite(out))), name
        np.testing.assert_array_equal(out, op(jax.random.key(1), image, {}), err_msg=name)


def test_color_jitter_factors_do_what_their_names_say():
    """Brightness scales every value by one factor; contrast scales the distances from the
    image's mean grey level; saturation those from each pixel's own grey level (which it
    keeps). Mid-range values, so nothing is clipped."""
    x = jax.random.uniform(jax.random.key(0), (8, 8, 3), minval=0.35, maxval=0.65)
    jitter = augment.AUGMENTATIONS.get("color_jitter")
    none = dict.fromkeys(("brightness", "contrast", "saturation"), 0.0)
    only = {name: none | {name: 0.2} for name in none}
    np.testing.assert_allclose(jitter(jax.random.key(1), x, none), x, rtol=1e-6)
    key = jax.random.key(2)
    ratio = np.asarray(jitter(key, x, only["brightness"]) / x)
    assert np.ptp(ratio) < 1e-5 and 0.8 <= ratio.mean() <= 1.2 and ratio.mean() != 1.0
    grey = x.mean(-1, keepdims=True)
    out = jitter(key, x, only["contrast"])
    factor = (out - grey.mean()) / (x - grey.mean())
    assert np.ptp(np.asarray(factor)) < 1e-3 and 0.8 <= float(factor.mean()) <= 1.2
    out = jitter(key, x, only["saturation"])
    np.testing.assert_allclose(out.mean(-1, keepdims=True), grey, atol=1e-6)
    factor = (out - grey) / (x - grey)
    assert np.ptp(np.asarray(factor)) < 1e-3 and 0.8 <= float(factor.mean()) <= 1.2
