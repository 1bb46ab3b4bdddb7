"""The two attention modules of the paper: channel attention (SE) and spatial self-attention.

Both work on NHWC feature maps. Parameters are kept in ``param_dtype`` (f32); the arithmetic
runs in ``dtype`` (f32 or bf16), except the softmax of the self-attention, which runs in at
least f32 because its logits grow with sqrt(d_k) and bf16 keeps only 8 mantissa bits.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from dualattn.models import layers
from dualattn.models.layers import batch_norm


def reduced_channels(channels: int, reduction: int) -> int:
    """Width of the squeezed layer: ``channels // reduction``, but never below one channel."""
    if reduction < 1:
        raise ValueError(f"reduction must be >= 1, got {reduction}")
    return max(1, channels // reduction)


class SqueezeExcitation(nnx.Module):
    """Hu et al.'s SE block: GAP -> FC(C -> C/r) -> ReLU -> FC(C/r -> C) -> sigmoid -> scale.

    Placed by the bottleneck after its last BN and before the residual add, as in SENet. The two
    FC layers carry biases, like the original SENet and timm's (legacy_)seresnet50, so their
    checkpoints map onto these parameters one to one.
    """

    def __init__(self, channels: int, reduction: int = 16, *, dtype=jnp.float32,
                 param_dtype=jnp.float32, rngs: nnx.Rngs):
        hidden = reduced_channels(channels, reduction)
        self.fc1 = layers.linear(channels, hidden, dtype=dtype, param_dtype=param_dtype,
                                 rngs=rngs)
        self.fc2 = layers.linear(hidden, channels, dtype=dtype, param_dtype=param_dtype,
                                 rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        squeezed = jnp.mean(x, axis=(1, 2))  # (B, C)
        gate = jax.nn.sigmoid(self.fc2(jax.nn.relu(self.fc1(squeezed))))
        return x * gate[:, None, None, :].astype(x.dtype)


class SpatialSelfAttention(nnx.Module):
    """Self-attention over the H*W positions of a feature map, added back with a learnable gate.

    Q, K and V are each a 1x1 convolution followed by BN (the paper's "1x1 conv + BN" branches);
    Q and K have ``C // reduction`` channels (d_k), V keeps all C. With N = H*W positions:

        A = Q K^T / sqrt(d_k)            (B, N, N), row i = query position i
        o = softmax(A, over keys j) V    (B, N, C)
        y = alpha * o + x

    ``alpha`` is a scalar initialised to 0, so at initialisation the module is the identity and
    a pretrained backbone's features pass through unchanged; training opens the gate.

    The paper's eq. (2) writes the normalisation "in the column direction" without fixing which
    index is the query; we normalise over keys, which is the standard reading of eq. (1)
    (softmax(QK^T/sqrt(d_k)) V) and of the SAGAN / non-local blocks it follows.
    """

    def __init__(self, channels: int, reduction: int = 8, *, dtype=jnp.float32,
                 param_dtype=jnp.float32, conv_general_dilated=jax.lax.conv_general_dilated,
                 conv_init: str = "he_fan_out", rngs: nnx.Rngs):
        self.key_channels = reduced_channels(channels, reduction)

        def branch(out_channels: int) -> tuple[nnx.Conv, nnx.BatchNorm]:
            conv = layers.conv(channels, out_channels, 1, dtype=dtype, param_dtype=param_dtype,
                               conv_general_dilated=conv_general_dilated, init=conv_init,
                               rngs=rngs)
            return conv, batch_norm(out_channels, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

        self.query_conv, self.query_bn = branch(self.key_channels)
        self.key_conv, self.key_bn = branch(self.key_channels)
        self.value_conv, self.value_bn = branch(channels)
        self.alpha = nnx.Param(jnp.zeros((), param_dtype))

    def attention_map(self, x: jax.Array, *, train: bool) -> jax.Array:
        """softmax(Q K^T / sqrt(d_k)) over keys, shape (B, N, N), in f32 (f64 for f64)."""
        q = self.query_bn(self.query_conv(x), use_running_average=not train)
        k = self.key_bn(self.key_conv(x), use_running_average=not train)
        b, h, w, _ = x.shape
        q = q.reshape(b, h * w, self.key_channels)
        k = k.reshape(b, h * w, self.key_channels)
        wide = jnp.promote_types(q.dtype, jnp.float32)
        logits = jnp.einsum("bid,bjd->bij", q, k, preferred_element_type=wide)
        return jax.nn.softmax(logits / math.sqrt(self.key_channels), axis=-1)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        attn = self.attention_map(x, train=train)
        v = self.value_bn(self.value_conv(x), use_running_average=not train)
        b, h, w, c = v.shape
        o = jnp.einsum("bij,bjc->bic", attn.astype(v.dtype), v.reshape(b, h * w, c))
        o = o.reshape(b, h, w, c)
        # The gate's gradient is one sum over the whole batch's map: in at least f32, so that
        # its cross-device sum is f32 too (``dualattn.models.mixed_precision``).
        wide = jnp.promote_types(o.dtype, self.alpha.dtype)
        return (self.alpha[...] * o.astype(wide)).astype(x.dtype) + x
