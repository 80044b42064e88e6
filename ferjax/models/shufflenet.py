"""ShuffleNetV2 (torchvision layout, NHWC) and the Clip_K5 units of RLR-CNet.

One unit class covers both: the standard unit (3x3 depthwise, ReLU) and the
RLR-CNet "Clip_K5" unit (first 1x1 of the main branch removed, 5x5 depthwise,
β-Mish). Branch modules are `nnx.Sequential`s whose indices match torchvision's
(`branch2.0` conv, `.1` BN, `.2` act, `.3` depthwise, ...), so ImageNet weights import by name.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from ferjax.models import layers
from ferjax.models.attention import ShuffleAttention

# Output channels of stage2..4 and conv5 for each width multiplier (Ma et al. 2018).
STAGE_CHANNELS = {
    0.5: (48, 96, 192, 1024),
    1.0: (116, 232, 464, 1024),
    1.5: (176, 352, 704, 1024),
    2.0: (244, 488, 976, 2048),
}
STAGE_REPEATS = (4, 8, 4)
SA_PLACEMENTS = ("none", "last", "stages")


@dataclasses.dataclass(frozen=True)
class UnitSpec:
    """How every unit of one network is built.

    kernel_size: depthwise kernel (3 standard, 5 for Clip_K5).
    clip: drop the first 1x1 conv of the main branch of stride-1 units.
    clip_stride2: also drop it in stride-2 units (only used when `clip`).
    act / beta: activation name and β for β-Mish.
    """
    kernel_size: int = 3
    clip: bool = False
    clip_stride2: bool = True
    act: str = "relu"
    beta: float = 1.5
    dtype: object = None


class ShuffleUnit(nnx.Module):
    """One ShuffleNetV2 unit: (N, H, W, in_ch) -> (N, H/stride, W/stride, out_ch)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, spec: UnitSpec, *,
                 rngs: nnx.Rngs):
        if stride == 1 and in_ch != out_ch:
            raise ValueError("a stride-1 ShuffleNet unit keeps its channel count")
        act = layers.activation(spec.act, spec.beta)
        k, dt = spec.kernel_size, spec.dtype
        half = out_ch // 2
        self.stride = stride

        def bn(c):
            return layers.batch_norm(c, dtype=dt, rngs=rngs)

        def dw(c):
            return layers.DepthwiseConv(c, k, stride=stride, dtype=dt, rngs=rngs)

        def pw(cin, cout):
            return layers.conv(cin, cout, 1, dtype=dt, rngs=rngs)

        self.branch1 = (nnx.Sequential(dw(in_ch), bn(in_ch), pw(in_ch, half), bn(half), act)
                        if stride > 1 else None)
        main_in = in_ch if stride > 1 else half
        clipped = spec.clip and (stride == 1 or spec.clip_stride2)
        if clipped:
            self.branch2 = nnx.Sequential(dw(main_in), bn(main_in), pw(main_in, half), bn(half),
                                          act)
        else:
            self.branch2 = nnx.Sequential(pw(main_in, half), bn(half), act, dw(half), bn(half),
                                          pw(half, half), bn(half), act)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.branch1 is None:
            x1, x2 = jnp.split(x, 2, axis=-1)
            out = jnp.concatenate([x1, self.branch2(x2)], axis=-1)
        else:
            out = jnp.concatenate([self.branch1(x), self.branch2(x)], axis=-1)
        return layers.channel_shuffle(out, 2)


def conv_bn_act(in_ch: int, out_ch: int, kernel: int, stride: int, spec: UnitSpec, *,
                rngs: nnx.Rngs) -> nnx.Sequential:
    """Conv -> BN -> activation; indices 0 / 1 match torchvision's `conv1` and `conv5`."""
    return nnx.Sequential(
        layers.conv(in_ch, out_ch, kernel, stride=stride, dtype=spec.dtype, rngs=rngs),
        layers.batch_norm(out_ch, dtype=spec.dtype, rngs=rngs),
        layers.activation(spec.act, spec.beta))


class ShuffleNetV2(nnx.Module):
    """ShuffleNetV2 trunk: (N, H, W, 3) -> (N, H/32, W/32, C).

    Args:
      width_mult: 0.5, 1.0, 1.5 or 2.0.
      spec: unit construction (standard or Clip_K5).
      sa_placement: 'none', 'last' (SA after the last unit) or 'stages' (after each stage).
      sa_groups: Shuffle Attention groups G (needs 2G | channels).
      stem_width: channels of the stem conv (24 in the paper; tests shrink it).
      channels: explicit (stage2, stage3, stage4, conv5) widths, overriding width_mult.
      units_held_out: leave this many final stage-4 units out (a dual-branch head owns them).
      include_conv5: end with the 1x1 conv5 (C = conv5 width); otherwise C = stage-4 width.
    """

    def __init__(self, *, width_mult: float = 1.0, spec: UnitSpec = UnitSpec(),
                 sa_placement: str = "none", sa_groups: int = 8, stem_width: int = 24,
                 channels: tuple[int, ...] | None = None, units_held_out: int = 0,
                 include_conv5: bool = True, rngs: nnx.Rngs):
        if channels is None:
            if width_mult not in STAGE_CHANNELS:
                raise ValueError(f"model.width_mult={width_mult}; expected one of "
                                 f"{sorted(STAGE_CHANNELS)}")
            channels = STAGE_CHANNELS[width_mult]
        if sa_placement not in SA_PLACEMENTS:
            raise ValueError(f"model.sa_placement={sa_placement!r}; expected {SA_PLACEMENTS}")
        self.spec = spec
        self.channels = tuple(channels)
        self.conv1 = conv_bn_act(3, stem_width, 3, 2, spec, rngs=rngs)
        in_ch = stem_width
        stages = []
        for i, (out_ch, repeats) in enumerate(zip(channels[:3], STAGE_REPEATS)):
            if i == 2:
                repeats -= units_held_out
            units = [ShuffleUnit(in_ch, out_ch, 2, spec, rngs=rngs)]
            units += [ShuffleUnit(out_ch, out_ch, 1, spec, rngs=rngs) for _ in range(repeats - 1)]
            stages.append(nnx.List(units))
            in_ch = out_ch
        self.stage2, self.stage3, self.stage4 = stages
        sa_stages = {"none": (), "last": (2,), "stages": (0, 1, 2)}[sa_placement]
        self.sa = nnx.List([
            ShuffleAttention(channels[i], sa_groups, dtype=spec.dtype, rngs=rngs)
            if i in sa_stages else None for i in range(3)])
        self.conv5 = (conv_bn_act(channels[2], channels[3], 1, 1, spec, rngs=rngs)
                      if include_conv5 else None)
        self.num_features = channels[3] if include_conv5 else channels[2]

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.spec.dtype is not None:
            x = x.astype(self.spec.dtype)
        x = layers.max_pool_3x3_s2(self.conv1(x))
        for stage, sa in zip((self.stage2, self.stage3, self.stage4), self.sa):
            for unit in stage:
                x = unit(x)
            if sa is not None:
                x = sa(x)
        if self.conv5 is not None:
            x = self.conv5(x)
        return x

    def output_size(self, input_size: int) -> int:
        """Spatial side of the output map for a square input of `input_size` pixels."""
        for _ in range(5):
            input_size = (input_size + 1) // 2
        return input_size
