"""Model tests: parameter counts against the torchvision/paper numbers, shapes, options."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from ferjax.models import HEADS, MODELS, build_model, count_params
from ferjax.models.attention import CBAM, ShuffleAttention, max_along, valid_sa_groups
from ferjax.models.layers import (DepthwiseConv, _depthwise_shifted, _smaller_than_kernel,
                                  channel_shuffle, conv_general_dilated,
                                  fusion_fence, materialize, max_pool_3x3_s2)
from ferjax.models import layers
from ferjax.models.layers import conv as conv_layer

TINY_RESNET = dict(width=8)
TINY_SHUFFLE = dict(channels=(16, 32, 64, 128), stem_width=8, sa_groups=2)
# At 32 px: 8×8 patches in shifted 4×4 windows, then one 4×4 window.
TINY_SWIN = dict(patch_size=4, embed_dim=8, depths=(2, 2), num_heads=(1, 2), window=4)
TINY = {"resnet18": TINY_RESNET, "swin_t": TINY_SWIN}


def abstract(cfg, image_size=224, num_classes=7):
    """Builds the model shape-only (no memory, no compute) to count parameters."""
    return nnx.eval_shape(lambda: build_model(ml_collections.ConfigDict(cfg),
                                              num_classes=num_classes, image_size=image_size,
                                              rngs=nnx.Rngs(0)))


@pytest.mark.parametrize("cfg, expected", [
    (dict(name="resnet18"), 11_180_103),
    (dict(name="resnet18", cbam_placement="block"), 11_180_103 + 89_880),
    (dict(name="resnet18", cbam_placement="stage"), 11_180_103 + 680 + 2_284 + 8_564 + 33_412),
    (dict(name="resnet18", cbam_placement="final"), 11_180_103 + 33_412),
    # RUL: two 1,605,824-parameter branches and a 64->7 classifier on the trunk.
    (dict(name="resnet18", head="rul"), 11_176_512 + 2 * 1_605_824 + 455),
    (dict(name="shufflenet_v2"), 1_260_779),
    (dict(name="shufflenet_v2", width_mult=0.5), 348_967),
    (dict(name="shufflenet_v2", kernel_size=5), 1_300_139),
    # torchvision's 1000-class counts 3,503,624 and 7,393,996 with a 7-class fc instead.
    (dict(name="shufflenet_v2", width_mult=1.5), 3_503_624 - 1_025_000 + 7_175),
    (dict(name="shufflenet_v2", width_mult=2.0), 7_393_996 - 2_049_000 + 14_343),
    (dict(name="rlrcnet", head="linear", sa_placement="none"), 958_645),
    (dict(name="rlrcnet", sa_placement="none"), 1_026_365),
    (dict(name="rlrcnet"), 1_026_365 + 174),   # + SA with G=8 on 464 channels
    # Swin-T's published count with 1000 classes, 4×4 patches at 224 px (its final
    # LayerNorm is MEK's extra one); MEK's: 2×2 patches (3·4·96 fewer weights), 7 classes.
    (dict(name="swin_t", patch_size=4), 28_288_354 - 769_000 + 5_383),
    (dict(name="swin_t"), 28_288_354 - 769_000 + 5_383 - 3_456),
])
def test_parameter_counts(cfg, expected):
    size = 112 if cfg == dict(name="swin_t") else 224
    assert count_params(abstract(cfg, image_size=size)) == expected


def test_rlrcnet_default_is_about_one_million():
    n = count_params(abstract(dict(name="rlrcnet")))
    assert abs(n - 1.02e6) / 1.02e6 < 0.03
    baseline = count_params(abstract(dict(name="shufflenet_v2")))
    assert 0.17 < 1 - n / baseline < 0.20  # the paper reports 17.74 % fewer


@pytest.mark.parametrize("name", MODELS.names())
@pytest.mark.parametrize("head", HEADS.names())
def test_every_model_and_head_runs_from_its_config_name(name, head):
    tiny = TINY.get(name, TINY_SHUFFLE)
    cfg = ml_collections.ConfigDict(dict(name=name, head=head, **tiny))
    if head == "dual_branch" and name in ("resnet18", "swin_t"):
        with pytest.raises(ValueError, match="dual_branch"):
            build_model(cfg, num_classes=5, image_size=32, rngs=nnx.Rngs(0))
        return
    if name == "rlrcnet" and head != "dual_branch":
        cfg.sa_placement = "last"
    model = build_model(cfg, num_classes=5, image_size=32, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
    if head == "rul":
        out = model(x, mix_perm=jnp.array([1, 0, 3, 2]))
        assert out["uncertainty"].shape == (4,) and bool(jnp.all(out["uncertainty"] > 0))
        lam = out["mix_lambda"]
        np.testing.assert_allclose(lam + lam[jnp.array([1, 0, 3, 2])], 1.0, rtol=1e-5)
    elif head == "dual_branch":
        out = model(jnp.concatenate([x, x]), alpha=0.7, split_batch=True)
    else:
        out = model(x, return_cam=True)
        assert out["cam"].shape == ((4, 4, 4, 5) if name == "swin_t" else (4, 1, 1, 5))
    assert out["logits"].shape == (4, 5) and out["logits"].dtype == jnp.float32
    model.eval()
    assert model(x)["logits"].shape == (4, 5)


def test_cam_is_the_classifier_applied_per_position():
    model = build_model(ml_collections.ConfigDict(dict(name="resnet18", **TINY_RESNET)),
                        num_classes=3, image_size=64, rngs=nnx.Rngs(0))
    model.eval()
    x = jax.random.normal(jax.random.key(2), (2, 64, 64, 3))
    out = model(x, return_cam=True)
    assert out["cam"].shape == (2, 2, 2, 3)
    # GAP of the CAM plus the bias gives back the logits (both are linear in F).
    np.testing.assert_allclose(out["cam"].mean(axis=(1, 2)) + model.head.fc.bias[...],
                               out["logits"], rtol=1e-4, atol=1e-5)


def test_flip_consistency_is_attainable_only_on_symmetric_stride_grids():
    """What EAC / MEK's attention consistency asks of the trunk: with left-right symmetric
    kernels, CAM(mirror) flipped back equals CAM(image) exactly when every stride-2 layer
    sees an odd-sized map (side = 32m + 1); at even sides (64, 224) the stride-2 grids of
    the image and its mirror are offset and the two maps differ."""
    model = build_model(ml_collections.ConfigDict(dict(name="resnet18", **TINY_RESNET)),
                        num_classes=3, image_size=33, rngs=nnx.Rngs(0))
    for _, v in nnx.iter_graph(model):
        if isinstance(v, nnx.Param) and v[...].ndim == 4:
            v[...] = 0.5 * (v[...] + v[...][:, ::-1])   # symmetric across the width axis
    model.eval()

    def mismatch(side):
        x = jax.random.normal(jax.random.key(4), (2, side, side, 3))
        cam = model(x, return_cam=True)["cam"]
        back = model(x[:, :, ::-1], return_cam=True)["cam"][:, :, ::-1]
        return float(jnp.abs(cam - back).max() / jnp.abs(cam).max())

    assert mismatch(33) < 1e-5
    assert mismatch(32) > 1e-2


def test_cam_has_no_gradient_into_the_classifier():
    model = build_model(ml_collections.ConfigDict(dict(name="resnet18", **TINY_RESNET)),
                        num_classes=3, image_size=32, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(3), (2, 32, 32, 3))
    grads = nnx.grad(lambda m: jnp.sum(m(x, return_cam=True)["cam"] ** 2))(model)
    assert float(jnp.abs(grads["head"]["fc"]["kernel"][...]).max()) == 0.0
    assert float(jnp.abs(grads["trunk"]["conv1"]["kernel"][...]).max()) > 0.0


def test_dual_branch_inference_is_alpha_half_on_the_same_batch():
    cfg = ml_collections.ConfigDict(dict(name="rlrcnet", **TINY_SHUFFLE))
    model = build_model(cfg, num_classes=4, image_size=32, rngs=nnx.Rngs(0))
    model.eval()
    x = jax.random.normal(jax.random.key(4), (2, 32, 32, 3))
    stacked = model(jnp.concatenate([x, x]), alpha=0.5, split_batch=True)["logits"]
    np.testing.assert_allclose(model(x)["logits"], stacked, rtol=1e-5, atol=1e-5)
    # α = 1 ignores the re-balancing branch: its input does not matter.
    a = model(jnp.concatenate([x, x]), alpha=1.0, split_batch=True)["logits"]
    b = model(jnp.concatenate([x, -x]), alpha=1.0, split_batch=True)["logits"]
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_shuffle_attention_at_init_is_a_constant_gate_then_shuffle():
    sa = ShuffleAttention(16, groups=2, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(5), (2, 4, 4, 16))
    expected = channel_shuffle(x * jax.nn.sigmoid(1.0), 2)
    np.testing.assert_allclose(sa(x), expected, rtol=1e-6, atol=1e-6)
    assert count_params(sa) == 6 * 16 // (2 * 2)


def test_shuffle_attention_rejects_groups_that_do_not_divide():
    assert 64 not in valid_sa_groups(464) and 8 in valid_sa_groups(464)
    with pytest.raises(ValueError, match="valid groups for 464"):
        ShuffleAttention(464, groups=64, rngs=nnx.Rngs(0))


def test_max_along_routes_the_gradient_to_the_maximum():
    x = jax.random.normal(jax.random.key(0), (3, 5, 7))
    for axis in (1, -1):
        np.testing.assert_array_equal(max_along(x, axis), jnp.max(x, axis, keepdims=True))
        g = jax.random.normal(jax.random.key(1), jnp.max(x, axis, keepdims=True).shape)
        grad = jax.grad(lambda x: jnp.sum(max_along(x, axis) * g))(x)
        one_hot = jax.nn.one_hot(jnp.argmax(x, axis), x.shape[axis], axis=axis)
        np.testing.assert_allclose(grad, one_hot * g, atol=1e-7)   # no ties: the argmax
    tied = jnp.array([[1.0, 3.0, 3.0, 2.0]])
    grad = jax.jit(jax.grad(lambda x: jnp.sum(max_along(x * 2.0, -1))))(tied)
    np.testing.assert_allclose(grad, [[0.0, 1.0, 1.0, 0.0]])       # d(2x)/dx split over 2


@pytest.mark.parametrize("size", [5, 9])  # 7x7 conv: small-map matmul path, XLA conv
def test_cbam_matches_a_numpy_computation(size):
    cbam = CBAM(32, reduction=16, rngs=nnx.Rngs(0))
    cbam.eval()
    x = np.asarray(jax.random.normal(jax.random.key(6), (1, size, size, 32)))
    w1, b1 = np.asarray(cbam.channel_gate.fc1.kernel[...]), np.asarray(cbam.channel_gate.fc1.bias[...])
    w2, b2 = np.asarray(cbam.channel_gate.fc2.kernel[...]), np.asarray(cbam.channel_gate.fc2.bias[...])

    def mlp(v):
        return np.maximum(v @ w1 + b1, 0) @ w2 + b2

    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    xc = x * sig(mlp(x.mean((1, 2))) + mlp(x.max((1, 2))))[:, None, None, :]
    pooled = np.concatenate([xc.max(-1, keepdims=True), xc.mean(-1, keepdims=True)], -1)
    k = np.asarray(cbam.spatial_gate.conv.kernel[...])  # (7, 7, 2, 1)
    padded = np.pad(pooled, ((0, 0), (3, 3), (3, 3), (0, 0)))
    conv = np.zeros((1, size, size, 1))
    for i in range(size):
        for j in range(size):
            conv[0, i, j, 0] = np.sum(padded[0, i:i + 7, j:j + 7, :] * k[..., 0])
    bn = cbam.spatial_gate.bn  # eval mode: running stats 0 / 1
    s = (conv - 0.0) / np.sqrt(1.0 + 1e-5) * np.asarray(bn.scale[...]) + np.asarray(bn.bias[...])
    np.testing.assert_allclose(cbam(jnp.asarray(x)), xc * sig(s), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fields, image_size, error", [
    (dict(name="shufflenet_v2", width_mult=3.0), 64,
     r"model.width_mult=3.0; expected one of \[0.5, 1.0, 1.5, 2.0\]"),
    (dict(name="shufflenet_v2", sa_placement="everywhere", **TINY_SHUFFLE), 64,
     r"model.sa_placement='everywhere'; expected \('none', 'last', 'stages'\)"),
    (dict(name="shufflenet_v2", sa_placement="branch", **TINY_SHUFFLE), 64,
     "model.sa_placement='branch' puts SA on the conventional branch of the dual-branch "
     "head; use it with model.head='dual_branch'"),
    (dict(name="resnet18", head="dual_branch", **TINY_RESNET), 64,
     "model.head='dual_branch' needs a backbone with a held-out last block"),
    (dict(name="swin_t", **{**TINY_SWIN, "num_heads": (1,)}), 32,
     r"model.depths \(2, 2\) and model.num_heads \(1,\) must have one entry per stage"),
    (dict(name="swin_t", **TINY_SWIN), 30,
     "data.image_size=30 does not fit Swin with patch size 4 and 2 stages"),
    (dict(name="swin_t", **TINY_SWIN), 40,
     "Swin stage 0 has a 10×10 grid, which 4×4 windows do not tile; use an image size of "
     "32·n")])
def test_a_model_config_that_cannot_be_built_is_named(fields, image_size, error):
    with pytest.raises(ValueError, match=error):
        nnx.eval_shape(lambda: build_model(ml_collections.ConfigDict(fields), num_classes=7,
                                           image_size=image_size, rngs=nnx.Rngs(0)))


def test_bfloat16_compute_keeps_float32_parameters():
    cfg = ml_collections.ConfigDict(dict(name="resnet18", dtype="bfloat16", **TINY_RESNET))
    model = build_model(cfg, num_classes=3, image_size=32, rngs=nnx.Rngs(0))
    params = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert all(p.dtype == jnp.float32 for p in params)
    out = model(jnp.ones((2, 32, 32, 3)))
    assert out["logits"].dtype == jnp.float32
    assert model.trunk(jnp.ones((2, 32, 32, 3))).dtype == jnp.bfloat16


def test_unknown_names_are_clear_errors():
    with pytest.raises(KeyError, match="unknown model 'resnet19'"):
        build_model(ml_collections.ConfigDict(dict(name="resnet19")), num_classes=7,
                    image_size=32, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="cbam_placement"):
        build_model(ml_collections.ConfigDict(dict(name="resnet18", cbam_placement="x")),
                    num_classes=7, image_size=32, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("size", [7, 8, 16])
def test_cpu_max_pool_matches_the_native_pool_and_routes_ties_like_torch(size):
    x = jax.random.normal(jax.random.key(size), (2, size, size, 3))
    g = jax.random.normal(jax.random.key(1), (2, (size - 1) // 2 + 1, (size - 1) // 2 + 1, 3))

    def native(v):
        return nnx.max_pool(v, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))

    y, vjp = jax.vjp(max_pool_3x3_s2, x)
    y_ref, vjp_ref = jax.vjp(native, x)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_allclose(vjp(g)[0], vjp_ref(g)[0], atol=1e-6)
    # A constant map: every window ties; each window's gradient goes to its first
    # non-padding position (windows start at -1, 1 with padding 1, stride 2).
    ones = jnp.ones((1, 4, 4, 1))
    grad = jax.grad(lambda v: jnp.sum(max_pool_3x3_s2(v)))(ones)
    np.testing.assert_array_equal(grad[0, :, :, 0], [[1, 1, 0, 0], [1, 1, 0, 0],
                                                      [0, 0, 0, 0], [0, 0, 0, 0]])


def test_fusion_fence_returns_its_operands_and_keeps_a_boundary_in_the_compiled_step():
    a = jnp.arange(12.0).reshape(3, 4) - 5.0
    b = (jnp.ones(2), jnp.array([-0.0, 7.0]))
    out = jax.jit(fusion_fence)({"a": a, "b": b})
    np.testing.assert_array_equal(out["a"], a)
    np.testing.assert_array_equal(out["b"][1], b[1])
    with_nan = a.at[0, 0].set(jnp.nan)             # the other branch: same values
    np.testing.assert_array_equal(jax.jit(fusion_fence)(with_nan), with_nan)
    # What it is for: XLA:CPU must still see a conditional between producer and consumer
    # (it drops optimization barriers); if a new XLA folds it away, this says so.
    hlo = jax.jit(lambda v: jnp.sin(fusion_fence(jnp.cos(v) * 3.0))).lower(a).compile()
    assert "conditional(" in hlo.as_text()


def test_materialize_is_the_identity_with_an_identity_gradient_and_a_cpu_boundary():
    x = jax.random.normal(jax.random.key(0), (2, 5, 5, 3))
    scale = jnp.arange(1.0, 4.0)
    np.testing.assert_array_equal(jax.jit(materialize)(x), x)

    def loss(v, through=materialize):
        return jnp.sum(jnp.sin(through(jnp.maximum(v, 0.0) * scale)))

    grad = jax.jit(jax.grad(loss))(x)
    expected = jax.grad(lambda v: loss(v, through=lambda a: a))(x)
    np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-6)
    # The boundary it is for: the ReLU is computed once, not again inside the consumer.
    relu_sin = jax.jit(lambda v: jnp.sin(materialize(jnp.maximum(v, 0.0))))
    assert "conditional(" in relu_sin.lower(x).compile().as_text()
    # Not under a mesh of several devices, where the fence would cost a collective.
    with jax.set_mesh(jax.sharding.Mesh(np.array(jax.devices()[:2]), ("data",))):
        assert "conditional(" not in relu_sin.lower(x).compile().as_text()


def test_batch_norm_train_matches_the_formula_with_gradients_through_its_statistics():
    x = 3.0 + 2.0 * jax.random.normal(jax.random.key(0), (4, 3, 5, 6))
    scale, bias = jnp.linspace(0.5, 2.0, 6), jnp.linspace(-1.0, 1.0, 6)

    def reference(x, scale, bias, eps=1e-5):   # what autodiff would differentiate
        mean = x.mean((0, 1, 2))
        var = ((x - mean) ** 2).mean((0, 1, 2))
        return (x - mean) / jnp.sqrt(var + eps) * scale + bias, mean, var

    def hand(x, scale, bias):
        return layers.batch_norm_train(x, scale, bias, 1e-5)

    out, vjp = jax.vjp(hand, x, scale, bias)
    out_ref, vjp_ref = jax.vjp(reference, x, scale, bias)
    for got, want in zip(out, out_ref):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # Zero mean and unit variance per channel before the affine part, whatever the shift.
    np.testing.assert_allclose(((out[0] - bias) / scale).mean((0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(((out[0] - bias) / scale).var((0, 1, 2)), 1.0, rtol=1e-4)
    # Cotangents on y alone (the training step) and on the returned statistics too.
    keys = jax.random.split(jax.random.key(1), 3)
    g_y = jax.random.normal(keys[0], x.shape)
    zeros = jnp.zeros(6)
    for cts in [(g_y, zeros, zeros),
                (g_y, jax.random.normal(keys[1], (6,)), jax.random.normal(keys[2], (6,)))]:
        for got, want in zip(vjp(cts), vjp_ref(cts)):
            np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)
    # The gradient of a per-channel shift of x is zero: the mean absorbs it.
    shift_grad = jax.grad(lambda c: jnp.vdot(hand(x + c, scale, bias)[0], g_y))(zeros)
    np.testing.assert_allclose(shift_grad, 0.0, atol=1e-3)


@pytest.mark.parametrize("affine,dtype", [(True, None), (False, None),
                                          (True, jnp.bfloat16)])
def test_ferjax_batch_norm_equals_flax_batch_norm_in_training_and_eval(affine, dtype):
    ours = layers.batch_norm(6, affine=affine, dtype=dtype, rngs=nnx.Rngs(0))
    flax_bn = nnx.BatchNorm(6, momentum=0.9, epsilon=1e-5, use_bias=affine,
                            use_scale=affine, use_fast_variance=False, dtype=dtype,
                            rngs=nnx.Rngs(0))
    if affine:
        for bn in (ours, flax_bn):
            bn.scale[...] = jnp.linspace(0.5, 2.0, 6)
            bn.bias[...] = jnp.linspace(-1.0, 1.0, 6)
    x = 1.0 + jax.random.normal(jax.random.key(3), (4, 5, 5, 6))
    tol = dict(rtol=1e-2, atol=2e-2) if dtype else dict(rtol=1e-5, atol=1e-5)
    got, want = ours(x, use_running_average=False), flax_bn(x, use_running_average=False)
    assert got.dtype == want.dtype
    np.testing.assert_allclose(np.float32(got), np.float32(want), **tol)
    np.testing.assert_allclose(ours.mean[...], flax_bn.mean[...], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ours.var[...], flax_bn.var[...], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.float32(ours(x, use_running_average=True)),
                               np.float32(flax_bn(x, use_running_average=True)), **tol)


@pytest.mark.parametrize("kernel,stride,size", [(3, 1, 8), (5, 1, 7), (5, 2, 8), (3, 2, 9)])
def test_cpu_depthwise_conv_matches_the_grouped_convolution_with_gradients(kernel, stride,
                                                                           size):
    conv = DepthwiseConv(6, kernel, stride=stride, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, size, size, 6))
    w = conv.kernel[...]

    def native(x, w):
        pad = kernel // 2
        return jax.lax.conv_general_dilated(x, w, (stride, stride), ((pad, pad), (pad, pad)),
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                            feature_group_count=6)

    np.testing.assert_allclose(conv(x), native(x, w), atol=1e-5)   # the layer's CPU path
    y, vjp = jax.vjp(lambda x, w: _depthwise_shifted(x, w, stride), x, w)
    y_ref, vjp_ref = jax.vjp(native, x, w)
    np.testing.assert_allclose(y, y_ref, atol=1e-5)
    g = jax.random.normal(jax.random.key(2), y.shape)
    for got, want in zip(vjp(g), vjp_ref(g)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel,stride,size", [(3, 1, 2), (3, 1, 1), (3, 2, 2), (7, 1, 2),
                                                (5, 2, 3), (3, 2, 4)])
def test_cpu_conv_on_maps_smaller_than_the_kernel_matches_lax(kernel, stride, size):
    pad = ((kernel // 2,) * 2,) * 2
    assert _smaller_than_kernel((size, size), (kernel, kernel), (stride, stride), pad)
    assert not _smaller_than_kernel((16, 16), (kernel, kernel), (stride, stride), pad)
    conv = conv_layer(4, 5, kernel, stride=stride, bias=True, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (3, size, size, 4))
    w, b = conv.kernel[...], conv.bias[...]
    pad = kernel // 2

    def native(x, w):
        return jax.lax.conv_general_dilated(x, w, (stride, stride), ((pad, pad), (pad, pad)),
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    np.testing.assert_allclose(conv(x), native(x, w) + b, atol=1e-5)
    y, vjp = jax.vjp(lambda x, w: conv_general_dilated(
        x, w, (stride, stride), ((pad, pad), (pad, pad)),
        dimension_numbers=jax.lax.conv_dimension_numbers(x.shape, w.shape,
                                                         ("NHWC", "HWIO", "NHWC"))), x, w)
    y_ref, vjp_ref = jax.vjp(native, x, w)
    np.testing.assert_allclose(y, y_ref, atol=1e-5)
    g = jax.random.normal(jax.random.key(2), y.shape)
    for got, want in zip(vjp(g), vjp_ref(g)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel,stride,size,pad", [(3, 1, 9, 1), (3, 2, 9, 1), (7, 2, 16, 3),
                                                    (1, 2, 8, 0), (5, 3, 16, 2)])
def test_convolution_traced_in_a_loop_body_has_the_gradients_of_lax(kernel, stride, size,
                                                                    pad):
    """Inside `loop_body_convolutions` (the microbatch scan) a CPU convolution's
    hand-written gradients equal lax's, strides whose windows leave rows unread included
    (10 px at stride 2, 17 at stride 3), and its jaxpr holds them; outside it, lax's."""
    x = jax.random.normal(jax.random.key(1), (3, size, size + 1, 4))
    w = jax.random.normal(jax.random.key(2), (kernel, kernel, 4, 5))
    padding = ((pad, pad), (pad, pad))

    def conv_sum(conv, x, w):
        return jnp.sum(jnp.sin(conv(x, w, (stride, stride), padding, dimension_numbers=(
            jax.lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))))))

    def ours(x, w):
        return conv_sum(conv_general_dilated, x, w)

    with layers.loop_body_convolutions():
        assert "custom_vjp_call" in str(jax.make_jaxpr(ours)(x, w))
        got = jax.grad(ours, (0, 1))(x, w)
    # (a new function: JAX reuses the trace of one it has seen, whatever the context)
    assert "custom_vjp_call" not in str(jax.make_jaxpr(
        lambda x, w: conv_sum(conv_general_dilated, x, w))(x, w))
    want = jax.grad(lambda x, w: conv_sum(jax.lax.conv_general_dilated, x, w), (0, 1))(x, w)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_a_large_batch_is_one_xla_convolution():
    """No batch slices on CPU (5-9 % slower on ResNet-18, benchmarks/RESULTS.md): 64 images
    of 56x56x64 (49 MiB) go to XLA as one strided convolution (a stride-1 one would take
    the Winograd path, tests/test_winograd.py)."""
    x = jax.ShapeDtypeStruct((64, 56, 56, 64), jnp.float32)
    w = jax.ShapeDtypeStruct((3, 3, 64, 128), jnp.float32)
    jaxpr = str(jax.make_jaxpr(lambda a, b: conv_general_dilated(
        a, b, (2, 2), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")))(x, w))
    assert jaxpr.count("conv_general_dilated") == 1, jaxpr


def test_classifiers_start_like_torch_linear():
    """Every Dense layer is initialised as torch's nn.Linear: kernel and bias uniform in
    ±1/sqrt(fan_in) (std 1/sqrt(3·fan_in)), not flax's lecun-normal kernel and zero bias."""
    model = build_model(ml_collections.ConfigDict(dict(name="resnet18", **TINY_RESNET)),
                        num_classes=7, image_size=64, rngs=nnx.Rngs(0))
    fan_in = model.head.fc.kernel[...].shape[0]
    for p in (model.head.fc.kernel[...], model.head.fc.bias[...]):
        assert float(jnp.max(jnp.abs(p))) <= fan_in ** -0.5
    big = layers.linear(4096, 64, rngs=nnx.Rngs(1))
    kernel, bias = np.asarray(big.kernel[...]), np.asarray(big.bias[...])
    assert np.abs(kernel).max() <= 1 / 64 and abs(kernel.std() * 64 * np.sqrt(3) - 1) < 0.01
    assert np.abs(bias).max() <= 1 / 64 and bias.std() > 0.3 / 64
    gated = CBAM(32, reduction=16, gate_bias=3.0, rngs=nnx.Rngs(0)).channel_gate.fc2.bias[...]
    np.testing.assert_allclose(gated, 1.5)  # the opening bias option still applies


@pytest.mark.parametrize("flip_bn", ["joint", "separate"])
def test_flip_pair_batch_norm_statistics_per_view_or_joint(flip_bn):
    """'separate' is the reference code's two passes: each view is normalised by its own
    batch statistics, so the logits equal a pass over the images alone; 'joint' normalises
    over both views (one 2N batch)."""
    from ferjax import methods
    model = build_model(ml_collections.ConfigDict(dict(name="resnet18", **TINY_RESNET)),
                        num_classes=7, image_size=32, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(7), (4, 32, 32, 3)) + jnp.linspace(0, 2, 32)[:, None]
    ctx = methods.StepContext(None, None, None, None, {"flip_bn": flip_bn})
    out = methods.FORWARDS.get("flip_pair")(model, {"image": x}, ctx)
    assert out["cam"].shape == out["cam_flipped"].shape == (4, 1, 1, 7)
    alone = model(x)["logits"]
    gap = float(jnp.max(jnp.abs(out["logits"] - alone)))
    if flip_bn == "joint":
        assert gap > 1e-3
        return
    assert gap < 1e-5
    mirrored_alone = model(x[:, :, ::-1], return_cam=True)["cam"]
    np.testing.assert_allclose(out["cam_flipped"], mirrored_alone, atol=1e-5)


def test_uncertainty_mix_forward_pairs_within_config_mix_groups():
    """config.loss.mix_group_size reaches the pairing: partners stay in their group of 4."""
    from ferjax import methods
    seen = {}

    def model(x, mix_perm):
        seen["perm"] = np.asarray(mix_perm)
        return {"logits": jnp.zeros((x.shape[0], 7))}

    x = jnp.zeros((16, 8, 8, 3))
    for group in (0, 4):
        ctx = methods.StepContext(None, None, None, jax.random.key(1),
                                  {"mix_group_size": group})
        out = methods.FORWARDS.get("uncertainty_mix")(model, {"image": x}, ctx)
        np.testing.assert_array_equal(out["mix_perm"], seen["perm"])
        assert sorted(seen["perm"].tolist()) == list(range(16))
        within = (seen["perm"] // 4 == np.arange(16) // 4).all()
        assert within == (group == 4)  # 0: the whole batch, partners cross groups
