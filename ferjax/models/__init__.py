"""Models by name: a backbone (trunk) plus a head, assembled from `config.model`.

    model = build_model(config.model, num_classes=7, image_size=224, rngs=nnx.Rngs(0))
    out = model(images)                       # {'logits': (N, K)}
    out = model(images, return_cam=True)      # + 'cam' (N, h, w, K), linear head
    out = model(images, mix_perm=perm)        # RUL head, training
    out = model(stacked, alpha=a, split_batch=True)  # dual-branch head, training

Model config fields left at None take the chosen model's own default (for example
`kernel_size` is 3 for shufflenet_v2 and 5 for rlrcnet).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
from flax import nnx

from ferjax.models import layers
from ferjax.models.attention import ShuffleAttention
from ferjax.models.heads import DualBranchHead, LinearHead, RULHead, class_activation_maps
from ferjax.models.resnet import ResNet18
from ferjax.models.shufflenet import ShuffleNetV2, ShuffleUnit, UnitSpec
from ferjax.models.swin import SwinTransformer
from ferjax.registry import Registry

__all__ = ["FERModel", "build_model", "MODELS", "HEADS", "class_activation_maps",
           "count_params", "mirror_aligned"]


class FERModel(nnx.Module):
    """trunk (N, H, W, 3) -> feature map -> head -> dict with 'logits' (N, K)."""

    def __init__(self, trunk: nnx.Module, head: nnx.Module):
        self.trunk = trunk
        self.head = head

    def __call__(self, images: jax.Array, **head_args) -> dict:
        return self.head(self.trunk(images), **head_args)


@dataclasses.dataclass
class Backbone:
    """What a backbone builder hands to the head builders."""
    trunk: nnx.Module
    num_features: int            # channels of the trunk output
    spatial: int                 # side of the trunk output for the configured image size
    # For the dual-branch head: builds one copy of the held-out last block.
    make_branch: Callable[[nnx.Rngs], nnx.Module] | None = None
    branch_attention: Callable[[nnx.Rngs], nnx.Module] | None = None
    shared_tail: nnx.Module | None = None
    branch_features: int = 0


MODELS: Registry[Callable[..., Backbone]] = Registry("model")
HEADS: Registry[Callable[..., nnx.Module]] = Registry("head")

# Default head of each model.
DEFAULT_HEAD = {"resnet18": "linear", "shufflenet_v2": "linear", "rlrcnet": "dual_branch",
                "swin_t": "linear"}


def mirror_aligned(name: str, image_size: int) -> bool:
    """Whether a mirrored input lands on the mirrored feature grid of model `name`, so that
    the CAMs of an image and its mirror can agree. The conv trunks downsample by 2 five
    times, which keeps the grids aligned only at sides 32m + 1 (tests/test_models.py);
    Swin's patches and 2×2 merges tile every grid its constructor accepts symmetrically."""
    return name == "swin_t" or (image_size - 1) % 32 == 0


def _field(cfg, name: str, default: Any) -> Any:
    value = cfg.get(name, None)
    return default if value is None else value


@MODELS.register("resnet18")
def _resnet18(cfg, *, image_size: int, dual: bool, dtype, rngs: nnx.Rngs) -> Backbone:
    _no_dual_branch(dual)
    trunk = ResNet18(width=_field(cfg, "width", 64),
                     cbam_placement=_field(cfg, "cbam_placement", "none"),
                     cbam_reduction=_field(cfg, "cbam_reduction", 16),
                     cbam_gate_bias=_field(cfg, "cbam_gate_bias", 0.0), dtype=dtype, rngs=rngs)
    return Backbone(trunk, trunk.num_features, trunk.output_size(image_size))


def _no_dual_branch(dual: bool) -> None:
    if dual:
        raise ValueError("model.head='dual_branch' needs a backbone with a held-out last "
                         "block: use model.name 'shufflenet_v2' or 'rlrcnet'")


@MODELS.register("swin_t")
def _swin_t(cfg, *, image_size: int, dual: bool, dtype, rngs: nnx.Rngs) -> Backbone:
    """MEK's official backbone (spec §3.4): Swin-T, 2×2 patches at 112 px, extra LayerNorm."""
    _no_dual_branch(dual)
    trunk = SwinTransformer(image_size=image_size, patch_size=_field(cfg, "patch_size", 2),
                            embed_dim=_field(cfg, "embed_dim", 96),
                            depths=tuple(_field(cfg, "depths", (2, 2, 6, 2))),
                            num_heads=tuple(_field(cfg, "num_heads", (3, 6, 12, 24))),
                            window=_field(cfg, "window", 7),
                            drop_path=_field(cfg, "drop_path", 0.1), dtype=dtype, rngs=rngs)
    return Backbone(trunk, trunk.num_features, trunk.output_side)


def _shufflenet(cfg, *, image_size, dual, dtype, rngs, spec_defaults: dict,
                sa_default: str) -> Backbone:
    spec = UnitSpec(kernel_size=_field(cfg, "kernel_size", spec_defaults["kernel_size"]),
                    clip=_field(cfg, "clip", spec_defaults["clip"]),
                    clip_stride2=_field(cfg, "clip_stride2", True),
                    act=_field(cfg, "activation", spec_defaults["act"]),
                    beta=_field(cfg, "beta", 1.5), dtype=dtype)
    sa_placement = _field(cfg, "sa_placement", sa_default)
    sa_groups = _field(cfg, "sa_groups", 8)
    if sa_placement == "branch" and not dual:
        raise ValueError("model.sa_placement='branch' puts SA on the conventional branch of "
                         "the dual-branch head; use it with model.head='dual_branch'")
    channels = cfg.get("channels", None)
    trunk = ShuffleNetV2(width_mult=_field(cfg, "width_mult", 1.0), spec=spec,
                         sa_placement="none" if sa_placement == "branch" else sa_placement,
                         sa_groups=sa_groups, stem_width=_field(cfg, "stem_width", 24),
                         channels=tuple(channels) if channels else None,
                         units_held_out=1 if dual else 0, include_conv5=not dual, rngs=rngs)
    spatial = trunk.output_size(image_size)
    if not dual:
        return Backbone(trunk, trunk.num_features, spatial)
    c4, c5 = trunk.channels[2], trunk.channels[3]
    return Backbone(
        trunk, c4, spatial,
        make_branch=lambda r: ShuffleUnit(c4, c4, 1, spec, rngs=r),
        branch_attention=((lambda r: ShuffleAttention(c4, sa_groups, dtype=dtype, rngs=r))
                          if sa_placement == "branch" else None),
        shared_tail=_conv5(c4, c5, spec, rngs), branch_features=c5)


def _conv5(c_in, c_out, spec, rngs):
    from ferjax.models.shufflenet import conv_bn_act
    return conv_bn_act(c_in, c_out, 1, 1, spec, rngs=rngs)


@MODELS.register("shufflenet_v2")
def _shufflenet_v2(cfg, **kw) -> Backbone:
    return _shufflenet(cfg, spec_defaults=dict(kernel_size=3, clip=False, act="relu"),
                       sa_default="none", **kw)


@MODELS.register("rlrcnet")
def _rlrcnet(cfg, **kw) -> Backbone:
    """RLR-CNet (spec §4.2): Clip_K5 units, β-Mish, SA(G=8) on the conventional branch."""
    return _shufflenet(cfg, spec_defaults=dict(kernel_size=5, clip=True, act="beta_mish"),
                       sa_default="branch" if kw["dual"] else "last", **kw)


@HEADS.register("linear")
def _linear_head(cfg, bb: Backbone, num_classes: int, *, dtype, rngs) -> nnx.Module:
    return LinearHead(bb.num_features, num_classes, dropout=_field(cfg, "dropout", 0.0),
                      dtype=dtype, rngs=rngs)


@HEADS.register("rul")
def _rul_head(cfg, bb: Backbone, num_classes: int, *, dtype, rngs) -> nnx.Module:
    return RULHead(bb.num_features, bb.spatial, num_classes,
                   out_dim=_field(cfg, "rul_dim", 64), dropout=_field(cfg, "rul_dropout", 0.4),
                   dtype=dtype, rngs=rngs)


@HEADS.register("dual_branch")
def _dual_head(cfg, bb: Backbone, num_classes: int, *, dtype, rngs) -> nnx.Module:
    return DualBranchHead(
        bb.make_branch(rngs), bb.make_branch(rngs), bb.branch_features, num_classes,
        attention_c=bb.branch_attention(rngs) if bb.branch_attention else None,
        tail=bb.shared_tail, dtype=dtype, rngs=rngs)


def build_model(cfg, *, num_classes: int, image_size: int, rngs: nnx.Rngs) -> FERModel:
    """Builds `cfg.name` with head `cfg.head` (None: the model's default head).

    Args:
      cfg: the `config.model` ConfigDict (or a plain dict).
      num_classes: K.
      image_size: square input side; fixes the RUL head's flattened size.
    """
    name = cfg.get("name", None)
    builder = MODELS.get(name)
    head_name = _field(cfg, "head", DEFAULT_HEAD.get(name, "linear"))
    head_builder = HEADS.get(head_name)
    dtype = layers.dtype_from_name(cfg.get("dtype", None))
    dtype = None if dtype == jax.numpy.float32 else dtype
    bb = builder(cfg, image_size=image_size, dual=head_name == "dual_branch", dtype=dtype,
                 rngs=rngs)
    if bb.spatial < 1:
        raise ValueError(f"data.image_size={image_size} is too small for model {name!r}")
    return FERModel(bb.trunk, head_builder(cfg, bb, num_classes, dtype=dtype, rngs=rngs))


def count_params(model: nnx.Module) -> int:
    """Number of trainable parameters (nnx.Param leaves), like torch's parameters()."""
    return sum(int(x.size) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def apply_pretrained(model: nnx.Module, cfg):
    """Loads `cfg.pretrained` (a weights file) into `model` if set; returns the report or None.

    `cfg.pretrained_strict` and `cfg.pretrained_exclude` (regexes) are passed through.
    """
    from ferjax.models.pretrained import load_pretrained
    path = cfg.get("pretrained", None)
    if not path:
        return None
    return load_pretrained(model, path, strict=cfg.get("pretrained_strict", True),
                           exclude=tuple(cfg.get("pretrained_exclude", ()) or ()))
