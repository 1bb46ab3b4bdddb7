"""ResNet-50 (v1.5) with optional Squeeze-and-Excitation in every bottleneck, NHWC.

The module tree follows torchvision's names (``conv1``, ``bn1``, ``layer1[0].conv2``,
``layer3[0].downsample_conv``...), so a torchvision or timm checkpoint maps onto it by renaming
a few keys, and the padding is explicit so every output pixel matches torch's: Flax's ``'SAME'``
pads strided 7x7 and 3x3 windows asymmetrically, torch pads symmetrically.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from dualattn.models import layers
from dualattn.models.attention import SqueezeExcitation
from dualattn.models.layers import batch_norm

EXPANSION = 4
RESNET50_STAGES = (3, 4, 6, 3)


class Bottleneck(nnx.Module):
    """1x1 -> 3x3 (carrying the stride, as in torchvision's v1.5) -> 1x1, then SE, then add."""

    def __init__(self, in_channels: int, width: int, stride: int, *, use_se: bool,
                 se_reduction: int, dtype, param_dtype,
                 conv_general_dilated=jax.lax.conv_general_dilated, conv_init: str = "he_fan_out",
                 rngs: nnx.Rngs):
        out_channels = width * EXPANSION
        self.dtype = dtype

        def conv(cin, cout, k, s=1, pad=0):
            return layers.conv(cin, cout, k, s, pad, dtype=dtype, param_dtype=param_dtype,
                               conv_general_dilated=conv_general_dilated, init=conv_init,
                               rngs=rngs)

        def bn(c):
            return batch_norm(c, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

        self.conv1, self.bn1 = conv(in_channels, width, 1), bn(width)
        self.conv2, self.bn2 = conv(width, width, 3, stride, 1), bn(width)
        self.conv3, self.bn3 = conv(width, out_channels, 1), bn(out_channels)
        self.se = (SqueezeExcitation(out_channels, se_reduction, dtype=dtype,
                                     param_dtype=param_dtype, rngs=rngs) if use_se else None)
        if stride != 1 or in_channels != out_channels:
            self.downsample_conv = conv(in_channels, out_channels, 1, stride)
            self.downsample_bn = bn(out_channels)
        else:
            self.downsample_conv = self.downsample_bn = None

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        ura = not train
        y = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=ura))
        y = jax.nn.relu(self.bn2(self.conv2(y), use_running_average=ura))
        y = self.bn3(self.conv3(y), use_running_average=ura)
        if self.se is not None:
            y = self.se(y)
        shortcut = x
        if self.downsample_conv is not None:
            shortcut = self.downsample_bn(self.downsample_conv(x), use_running_average=ura)
        # BatchNorm returns f32 (layers.batch_norm): the block's output is the compute dtype.
        return jax.nn.relu(y + shortcut).astype(self.dtype)


class ResNet(nnx.Module):
    """The ReID backbone: stem, four stages, no pooling and no classifier.

    ``stage_sizes`` and ``width`` shrink it for tests (ResNet-50 is ``(3, 4, 6, 3)`` and 64);
    ``last_stride=1`` keeps the last stage at 1/16 of the input, as ReID models do, giving a
    24x8 map for a 384x128 image. The output has ``width * 8 * 4`` channels (2048).
    ``conv_general_dilated`` goes to every convolution (``layers.conv``).
    """

    def __init__(self, *, stage_sizes: Sequence[int] = RESNET50_STAGES, width: int = 64,
                 last_stride: int = 1, use_se: bool = True, se_reduction: int = 16,
                 dtype=jnp.float32, param_dtype=jnp.float32,
                 conv_general_dilated=jax.lax.conv_general_dilated, conv_init: str = "he_fan_out",
                 rngs: nnx.Rngs):
        if len(stage_sizes) != 4 or min(stage_sizes) < 1:
            raise ValueError(f"stage_sizes must be four positive block counts, got {stage_sizes}")
        if last_stride not in (1, 2):
            raise ValueError(f"last_stride must be 1 or 2, got {last_stride}")
        self.dtype = dtype
        self.conv1 = layers.conv(3, width, 7, 2, 3, dtype=dtype, param_dtype=param_dtype,
                                 conv_general_dilated=conv_general_dilated, init=conv_init,
                                 rngs=rngs)
        self.bn1 = batch_norm(width, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        in_channels = width
        for i, num_blocks in enumerate(stage_sizes):
            stage_width = width * 2**i
            first_stride = (1, 2, 2, last_stride)[i]
            blocks = []
            for j in range(num_blocks):
                blocks.append(Bottleneck(in_channels, stage_width, first_stride if j == 0 else 1,
                                         use_se=use_se, se_reduction=se_reduction, dtype=dtype,
                                         param_dtype=param_dtype,
                                         conv_general_dilated=conv_general_dilated,
                                         conv_init=conv_init, rngs=rngs))
                in_channels = stage_width * EXPANSION
            setattr(self, f"layer{i + 1}", nnx.List(blocks))
        self.out_channels = in_channels

    def stages(self) -> tuple[nnx.List, ...]:
        return (self.layer1, self.layer2, self.layer3, self.layer4)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        x = x.astype(self.dtype)
        x = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=not train))
        x = x.astype(self.dtype)  # BatchNorm returns f32 (layers.batch_norm)
        x = layers.max_pool(x, 3, 2, 1)
        for stage in self.stages():
            for block in stage:
                x = block(x, train=train)
        return x
