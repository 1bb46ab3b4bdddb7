"""The paper's ReID network: SE-ResNet-50 -> spatial self-attention -> GAP -> BNNeck -> FC.

The switches ``use_se``, ``use_sa`` and ``bnneck`` turn the paper's ablation rows (ResNet-50,
+SE, +SA, +SE+SA) and BoT's head into configuration rather than code. Each switch removes
exactly its own parameters.

Outputs:
- train mode (``train=True``): ``ReIDOutput(features, logits)`` where ``features`` is the pooled
  feature *before* the BNNeck (for the triplet loss) and ``logits`` come from the BN'd feature
  (for the cross-entropy), as in BoT;
- eval mode: the test feature, after the BNNeck by default (``test_feature="after"``) or before
  it (``"before"``). Without a BNNeck both names mean the pooled feature.

The head (pooling, BNNeck, classifier) runs in f32 for a bf16 or f32 backbone, and in f64
for an f64 one (the numerics comparison's ground truth).
``conv_general_dilated`` is passed to every convolution (``nnx.Conv``'s hook; the trainer
gives ``dualattn.models.cpu_conv``'s on the CPU).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from dualattn.models.attention import SpatialSelfAttention
from dualattn.models.layers import batch_norm
from dualattn.models.resnet import RESNET50_STAGES, ResNet

TEST_FEATURES = ("after", "before")


class ReIDOutput(NamedTuple):
    features: jax.Array  # (B, D) at least f32, before the BNNeck: the triplet loss's input
    logits: jax.Array  # (B, num_classes) at least f32: the cross-entropy's input


def _as_dtype(dtype) -> jnp.dtype:
    """Accept ``jnp.bfloat16`` or the config-friendly string ``"bfloat16"``."""
    return jnp.dtype(dtype)


def at_least_f32(dtype) -> jnp.dtype:
    """f32 for bf16 and f32, the dtype itself when it is wider (f64)."""
    return jnp.promote_types(dtype, jnp.float32)


class ReIDNet(nnx.Module):

    def __init__(self, num_classes: int, *, stage_sizes: Sequence[int] = RESNET50_STAGES,
                 width: int = 64, last_stride: int = 1, use_se: bool = True,
                 se_reduction: int = 16, use_sa: bool = True, sa_reduction: int = 8,
                 bnneck: bool = True, test_feature: str = "after", dtype="float32",
                 param_dtype="float32", conv_general_dilated=jax.lax.conv_general_dilated,
                 conv_init: str = "he_fan_out", rngs: nnx.Rngs):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if test_feature not in TEST_FEATURES:
            raise ValueError(f"test_feature must be one of {TEST_FEATURES}, got {test_feature!r}")
        dtype, param_dtype = _as_dtype(dtype), _as_dtype(param_dtype)
        self.test_feature = test_feature
        self.head_dtype = at_least_f32(dtype)
        self.backbone = ResNet(stage_sizes=tuple(stage_sizes), width=width,
                               last_stride=last_stride, use_se=use_se,
                               se_reduction=se_reduction, dtype=dtype, param_dtype=param_dtype,
                               conv_general_dilated=conv_general_dilated, conv_init=conv_init,
                               rngs=rngs)
        self.feature_dim = self.backbone.out_channels
        self.attention = (SpatialSelfAttention(self.feature_dim, sa_reduction, dtype=dtype,
                                               param_dtype=param_dtype,
                                               conv_general_dilated=conv_general_dilated,
                                               conv_init=conv_init, rngs=rngs)
                          if use_sa else None)
        # BNNeck: BoT freezes the BN bias at zero, which is the same as having none.
        self.bottleneck = (batch_norm(self.feature_dim, use_bias=False, dtype=self.head_dtype,
                                      param_dtype=param_dtype, rngs=rngs)
                           if bnneck else None)
        self.classifier = nnx.Linear(self.feature_dim, num_classes, use_bias=False,
                                     dtype=self.head_dtype, param_dtype=param_dtype,
                                     kernel_init=nnx.initializers.normal(0.001), rngs=rngs)

    def feature_map(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Backbone and self-attention: the (B, H/16, W/16, D) map that is pooled."""
        fmap = self.backbone(x, train=train)
        if self.attention is not None:
            fmap = self.attention(fmap, train=train)
        return fmap

    def __call__(self, x: jax.Array, *, train: bool,
                 feature: str | None = None) -> ReIDOutput | jax.Array:
        """``feature`` ("after"/"before") overrides ``test_feature`` for this eval-mode call."""
        pooled = jnp.mean(self.feature_map(x, train=train).astype(self.head_dtype), axis=(1, 2))
        neck = pooled
        if self.bottleneck is not None:
            neck = self.bottleneck(pooled, use_running_average=not train)
        if train:
            return ReIDOutput(features=pooled, logits=self.classifier(neck))
        feature = feature or self.test_feature
        if feature not in TEST_FEATURES:
            raise ValueError(f"feature must be one of {TEST_FEATURES}, got {feature!r}")
        return neck if feature == "after" else pooled


def count_params(module: nnx.Module) -> int:
    """Number of trainable scalars (``nnx.Param``); BN running statistics are not counted."""
    return sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))
