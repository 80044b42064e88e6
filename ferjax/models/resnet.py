"""ResNet-18 trunk in the torchvision layout (NHWC), with optional CBAM.

Attribute names follow torchvision (`conv1`, `bn1`, `layer1.0.conv1`, `downsample.0`, ...)
so that a torchvision state dict maps onto the NNX state by name.
"""

from __future__ import annotations

import jax
from flax import nnx

from ferjax.models import layers
from ferjax.models.attention import CBAM

CBAM_PLACEMENTS = ("block", "stage", "final", "none")


class BasicBlock(nnx.Module):
    """Two 3x3 convs with a residual; CBAM (if any) sits after bn2, before the addition."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, *, use_cbam: bool = False,
                 cbam_reduction: int = 16, cbam_gate_bias: float = 0.0, dtype=None,
                 rngs: nnx.Rngs):
        self.conv1 = layers.conv(in_ch, out_ch, 3, stride=stride, dtype=dtype, rngs=rngs)
        self.bn1 = layers.batch_norm(out_ch, dtype=dtype, rngs=rngs)
        self.conv2 = layers.conv(out_ch, out_ch, 3, dtype=dtype, rngs=rngs)
        self.bn2 = layers.batch_norm(out_ch, dtype=dtype, rngs=rngs)
        self.cbam = (CBAM(out_ch, cbam_reduction, cbam_gate_bias, dtype=dtype, rngs=rngs)
                     if use_cbam else None)
        self.downsample = (nnx.Sequential(
            layers.conv(in_ch, out_ch, 1, stride=stride, dtype=dtype, rngs=rngs),
            layers.batch_norm(out_ch, dtype=dtype, rngs=rngs))
            if stride != 1 or in_ch != out_ch else None)

    def __call__(self, x: jax.Array) -> jax.Array:
        out = layers.materialize(jax.nn.relu(self.bn1(self.conv1(x))))
        out = self.bn2(self.conv2(out))
        if self.cbam is not None:
            out = self.cbam(out)
        shortcut = x if self.downsample is None else self.downsample(x)
        return layers.materialize(jax.nn.relu(out + shortcut))


class ResNet18(nnx.Module):
    """ResNet-18 trunk: (N, H, W, 3) -> (N, H/32, W/32, 8·width), i.e. 7x7x512 at 224 px.

    Args:
      width: channels of the first stage (64 in the paper; tests use tiny widths).
      cbam_placement: 'block' (inside all 8 BasicBlocks), 'stage' (after each stage),
        'final' (one CBAM on the last map) or 'none'.
    """

    def __init__(self, *, width: int = 64, cbam_placement: str = "none",
                 cbam_reduction: int = 16, cbam_gate_bias: float = 0.0, dtype=None,
                 rngs: nnx.Rngs):
        if cbam_placement not in CBAM_PLACEMENTS:
            raise ValueError(f"model.cbam_placement={cbam_placement!r}; "
                             f"expected one of {CBAM_PLACEMENTS}")
        cbam_kw = dict(cbam_reduction=cbam_reduction, cbam_gate_bias=cbam_gate_bias)
        self.conv1 = nnx.Conv(3, width, (7, 7), strides=(2, 2), padding=((3, 3), (3, 3)),
                              use_bias=False, kernel_init=layers.conv_init, dtype=dtype,
                              rngs=rngs, conv_general_dilated=layers.conv_general_dilated)
        self.bn1 = layers.batch_norm(width, dtype=dtype, rngs=rngs)
        widths = [width, 2 * width, 4 * width, 8 * width]
        in_ch = width
        stages = []
        for i, out_ch in enumerate(widths):
            stride = 1 if i == 0 else 2
            stages.append(nnx.List([
                BasicBlock(in_ch, out_ch, stride, use_cbam=cbam_placement == "block",
                           dtype=dtype, rngs=rngs, **cbam_kw),
                BasicBlock(out_ch, out_ch, 1, use_cbam=cbam_placement == "block",
                           dtype=dtype, rngs=rngs, **cbam_kw),
            ]))
            in_ch = out_ch
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.stage_cbam = (nnx.List([CBAM(c, cbam_reduction, cbam_gate_bias, dtype=dtype,
                                          rngs=rngs) for c in widths])
                           if cbam_placement == "stage" else None)
        self.final_cbam = (CBAM(widths[-1], cbam_reduction, cbam_gate_bias, dtype=dtype,
                                rngs=rngs) if cbam_placement == "final" else None)
        self.num_features = widths[-1]
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.dtype is not None:
            x = x.astype(self.dtype)
        # Activations that feed a convolution are materialized (see layers.materialize).
        x = layers.materialize(x)
        x = layers.materialize(layers.max_pool_3x3_s2(jax.nn.relu(self.bn1(self.conv1(x)))))
        for i, stage in enumerate((self.layer1, self.layer2, self.layer3, self.layer4)):
            for block in stage:
                x = block(x)
            if self.stage_cbam is not None:
                x = self.stage_cbam[i](x)
        if self.final_cbam is not None:
            x = self.final_cbam(x)
        return x

    def output_size(self, input_size: int) -> int:
        """Spatial side of the output map for a square input of `input_size` pixels."""
        for _ in range(5):  # stem conv, max-pool and three stride-2 stages
            input_size = (input_size + 1) // 2
        return input_size
