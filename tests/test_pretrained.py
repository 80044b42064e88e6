"""Weight import from torchvision-layout state dicts: parity with PyTorch, reports, formats."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from ferjax.models import apply_pretrained, build_model
from ferjax.models.pretrained import (export_state_dict, import_state_dict, load_pretrained,
                                      load_state_dict)


def _build(**cfg):
    return build_model(ml_collections.ConfigDict(cfg), num_classes=7, image_size=64,
                       rngs=nnx.Rngs(3))


def _eval_logits(model, images_nhwc):
    model.eval()
    return np.asarray(nnx.jit(lambda m, x: m(x)["logits"])(model, jnp.asarray(images_nhwc)))


@pytest.mark.parametrize("arch", ["resnet18", "shufflenet_v2"])
def test_torchvision_weights_give_the_same_logits_as_pytorch(arch):
    torch = pytest.importorskip("torch")
    from benchmarks.torch_reference import TorchResNet18, TorchShuffleNetV2, randomize_batchnorm

    torch.manual_seed(0)
    ref = TorchResNet18() if arch == "resnet18" else TorchShuffleNetV2()
    randomize_batchnorm(ref)
    ref.eval()
    images = np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        expected = ref(torch.from_numpy(images)).numpy()
    model = _build(name=arch)
    state = {k: v.numpy() for k, v in ref.state_dict().items()}
    report = import_state_dict(model, state)
    assert not report.missing and not report.unexpected
    got = _eval_logits(model, images.transpose(0, 2, 3, 1))
    assert np.max(np.abs(got - expected)) < 1e-4


def _random_torch_swin():
    """A narrow PyTorch Swin at 56 px with random weights, LayerNorms included: (its state
    dict as numpy, NCHW images, its logits)."""
    torch = pytest.importorskip("torch")
    from benchmarks.torch_reference import TorchSwin

    torch.manual_seed(0)
    ref = TorchSwin(image_size=56, dim=16, depths=(2, 2, 2), heads=(2, 2, 4))
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.1 * torch.randn_like(p))
    images = np.random.default_rng(0).normal(size=(2, 3, 56, 56)).astype(np.float32)
    with torch.no_grad():
        expected = ref(torch.from_numpy(images)).numpy()
    return {k: v.numpy() for k, v in ref.state_dict().items()}, images, expected


def _narrow_swin(seed: int):
    return build_model(ml_collections.ConfigDict(dict(
        name="swin_t", embed_dim=16, depths=(2, 2, 2), num_heads=(2, 2, 4))),
        num_classes=7, image_size=56, rngs=nnx.Rngs(seed))


def test_swin_weights_in_the_reference_layout_give_the_same_logits_as_pytorch():
    """A narrow Swin at 56 px (28² and 14² grids in shifted 7×7 windows, then one 7×7
    window) keyed as the Swin reference code keys it; its derived buffers
    (relative_position_index, attn_mask) are skipped."""
    state, images, expected = _random_torch_swin()
    model = _narrow_swin(3)
    state["layers.0.blocks.1.attn.relative_position_index"] = np.zeros((49, 49), np.int64)
    state["layers.0.blocks.1.attn_mask"] = np.zeros((16, 49, 49), np.float32)
    report = import_state_dict(model, state)
    assert not report.missing and not report.unexpected
    assert {"layers.1.blocks.1.attn.relative_position_bias_table",
            "layers.1.downsample.reduction.weight", "patch_embed.proj.weight",
            "norm.weight"} <= set(report.loaded)
    got = _eval_logits(model, images.transpose(0, 2, 3, 1))
    assert np.max(np.abs(got - expected)) < 1e-4
    exported = export_state_dict(model)
    np.testing.assert_array_equal(exported["layers.2.blocks.0.attn.relative_position_bias_table"],
                                  state["layers.2.blocks.0.attn.relative_position_bias_table"])


def test_mek_released_swin_transfer_file_gives_the_same_logits(tmp_path):
    """MEK's released model is a `SwinTransFER`, saved as {'state_dict_model': ...}: the
    Swin under `encoder.` (with a final LayerNorm and face head its forward never calls),
    then `norm` and the classifier `head`. Read from a .pt file, it gives the same logits."""
    torch = pytest.importorskip("torch")
    state, images, expected = _random_torch_swin()
    released = {("head." + k[3:] if k.startswith("fc.") else
                 k if k.startswith("norm.") else "encoder." + k): torch.from_numpy(v)
                for k, v in state.items()}
    released["encoder.norm.weight"] = torch.full((64,), 7.0)  # unused: must not load
    released["encoder.feature.0.weight"] = torch.ones(64, 64)
    torch.save({"state_dict_model": released, "step": 59999}, tmp_path / "mek.pt")
    model = _narrow_swin(4)
    report = load_pretrained(model, str(tmp_path / "mek.pt"))
    assert "SwinTransFER" in str(report) and "2 tensors" in str(report)
    assert {"fc.weight", "norm.weight", "patch_embed.proj.weight"} <= set(report.loaded)
    got = _eval_logits(model, images.transpose(0, 2, 3, 1))
    assert np.max(np.abs(got - expected)) < 1e-4


def test_pth_file_loads_through_torch(tmp_path):
    torch = pytest.importorskip("torch")
    from benchmarks.torch_reference import TorchResNet18

    ref = TorchResNet18(width=8)
    path = tmp_path / "face.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}, path)
    model = build_model(ml_collections.ConfigDict(dict(name="resnet18", width=8)),
                        num_classes=7, image_size=32, rngs=nnx.Rngs(0))
    report = load_pretrained(model, str(path))
    assert len(report.loaded) == len([k for k in ref.state_dict() if "num_batches" not in k])
    np.testing.assert_allclose(model.trunk.conv1.kernel[...],
                               ref.conv1.weight.detach().numpy().transpose(2, 3, 1, 0))


@pytest.mark.parametrize("fmt", ["npz", "safetensors"])
def test_export_and_reimport_without_torch(tmp_path, fmt):
    source = build_model(ml_collections.ConfigDict(dict(name="resnet18", width=8)),
                         num_classes=7, image_size=32, rngs=nnx.Rngs(1))
    state = export_state_dict(source)
    path = tmp_path / f"w.{fmt}"
    if fmt == "npz":
        np.savez(path, **state)
    else:
        from safetensors.numpy import save_file
        save_file(state, str(path))
    target = build_model(ml_collections.ConfigDict(dict(name="resnet18", width=8,
                                                        pretrained=str(path))),
                         num_classes=7, image_size=32, rngs=nnx.Rngs(2))
    apply_pretrained(target, ml_collections.ConfigDict(dict(pretrained=str(path))))
    x = np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(_eval_logits(target, x), _eval_logits(source, x), atol=1e-5)
    assert sorted(load_state_dict(str(path))) == sorted(state)


def test_strict_import_names_missing_keys_and_leaves_the_model_untouched():
    plain = export_state_dict(build_model(ml_collections.ConfigDict(dict(name="resnet18", width=8)),
                                          num_classes=7, image_size=32, rngs=nnx.Rngs(1)))
    cbam = build_model(ml_collections.ConfigDict(dict(name="resnet18", width=8,
                                                      cbam_placement="block")),
                       num_classes=7, image_size=32, rngs=nnx.Rngs(2))
    before = np.asarray(cbam.trunk.conv1.kernel[...]).copy()
    with pytest.raises(ValueError, match=r"missing \(\d+\): .*cbam"):
        import_state_dict(cbam, plain)
    np.testing.assert_array_equal(cbam.trunk.conv1.kernel[...], before)
    report = import_state_dict(cbam, plain, exclude=[r"\.cbam\."])
    assert not report.missing and report.excluded and len(report.loaded) == len(plain)


def test_shape_mismatch_is_reported_even_when_not_strict():
    state = export_state_dict(build_model(ml_collections.ConfigDict(dict(name="resnet18", width=8)),
                                          num_classes=1000, image_size=32, rngs=nnx.Rngs(1)))
    model = build_model(ml_collections.ConfigDict(dict(name="resnet18", width=8)),
                        num_classes=7, image_size=32, rngs=nnx.Rngs(2))
    with pytest.raises(ValueError, match=r"fc\.weight \(1000, 64\) vs \(64, 7\)"):
        import_state_dict(model, state, strict=False)
    report = import_state_dict(model, state, exclude=[r"^fc\."])
    assert report.excluded == ["fc.bias", "fc.weight"] and not report.missing


def test_missing_file_and_unknown_format_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_state_dict(str(tmp_path / "nope.npz"))
    bad = tmp_path / "w.h5"
    bad.write_bytes(b"x")
    with pytest.raises(ValueError, match="unsupported weights format"):
        load_state_dict(str(bad))
