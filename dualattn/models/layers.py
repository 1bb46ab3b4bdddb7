"""Layer factories shared by the backbone, the attention modules and the head.

They fix the two conventions that make our numbers line up with PyTorch's: BatchNorm with
torch's defaults, and He-normal (fan-out) convolution initialisation as torchvision uses.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

# torch.nn.BatchNorm2d(momentum=0.1, eps=1e-5): Flax's momentum is the weight of the old value.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

# torchvision: nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu"), untruncated.
conv_kernel_init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


def batch_norm(features: int, *, dtype=jnp.float32, param_dtype=jnp.float32, use_bias=True,
               scale_init=nnx.initializers.ones, rngs: nnx.Rngs) -> nnx.BatchNorm:
    """BatchNorm over the channel (last) axis with torch's momentum and epsilon.

    Running statistics live in ``param_dtype`` (f32) whatever the compute ``dtype``; Flax
    reduces the batch statistics in f32 even for bf16 inputs.
    """
    return nnx.BatchNorm(features, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, dtype=dtype,
                         param_dtype=param_dtype, use_bias=use_bias, scale_init=scale_init,
                         rngs=rngs)


# Pixels are contracted over axes 0 and 1 of (rows, columns, channels) operands.
_OVER_PIXELS = (((0, 1), (0, 1)), ((), ()))


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _matmul_over_pixels(x: jax.Array, w: jax.Array, precision) -> jax.Array:
    """(P, Q, C) x (C, O) -> (P, Q, O): a 1x1 convolution with the pixels flattened to P x Q."""
    return jnp.einsum("pqc,co->pqo", x, w, precision=precision)


def _matmul_over_pixels_fwd(x, w, precision):
    return _matmul_over_pixels(x, w, precision), (x, w)


def _matmul_over_pixels_bwd(precision, residuals, g):
    """Kernel gradient with the narrower of (x, g) as the transposed operand.

    XLA:CPU's matmul library wants the contracted (pixel) axes last on the left operand, so
    the left operand of the kernel gradient is physically transposed first. JAX's own rule
    puts g on the left, which for the expanding convolutions (conv3 and the downsample, 2-4x
    wider outputs) transposes the wide tensor: those copies took a fifth of the CPU step
    (8.1 -> 6.5 s per ResNet-50 step at batch 32, 384x128). On GPUs either form is one GEMM.
    """
    x, w = residuals
    dx = jnp.einsum("pqo,co->pqc", g, w, precision=precision)
    if x.shape[-1] <= g.shape[-1]:
        dw = jax.lax.dot_general(x, g, _OVER_PIXELS, precision=precision)
    else:
        dw = jax.lax.dot_general(g, x, _OVER_PIXELS, precision=precision).T
    return dx.astype(x.dtype), dw.astype(w.dtype)


_matmul_over_pixels.defvjp(_matmul_over_pixels_fwd, _matmul_over_pixels_bwd)


def pointwise_conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                                   rhs_dilation=None, dimension_numbers=None,
                                   feature_group_count=1, precision=None,
                                   preferred_element_type=None, **_unused) -> jax.Array:
    """``lax.conv_general_dilated`` for 1x1 kernels (NHWC, HWIO, no padding) as a matmul.

    Why: XLA:CPU computes the kernel gradient of a 1x1 convolution about 3x slower than the
    same contraction written as a matmul (measured 10.7 vs 3.3 ms for 16x48x16x256 -> 64), and
    1x1 convolutions are two thirds of ResNet-50's; the matmul's own gradient then transposes
    the narrower operand (``_matmul_over_pixels_bwd``). On GPUs both forms become one GEMM.
    """
    if rhs.shape[:2] != (1, 1) or feature_group_count != 1 or any(
            p != (0, 0) for p in padding) or preferred_element_type is not None:
        raise ValueError("pointwise convolution needs a 1x1 kernel, no padding, no groups and "
                         "no preferred_element_type")
    sh, sw = window_strides
    x = lhs[:, ::sh, ::sw, :] if (sh, sw) != (1, 1) else lhs
    n, h, w, c = x.shape
    y = _matmul_over_pixels(x.reshape(n * h, w, c), rhs[0, 0], precision)
    return y.reshape(n, h, w, rhs.shape[-1])


# From this many input channels up, a spatial kernel's gradient is taken as per-tap matmuls.
TAP_MATMUL_MIN_CHANNELS = 256


def _spatial_conv(x, w, strides, padding, precision):
    return jax.lax.conv_general_dilated(x, w, strides, padding, precision=precision,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_tap_matmul_grad(x, w, strides, padding, precision):
    """A plain NHWC convolution whose kernel gradient is one matmul per kernel tap."""
    return _spatial_conv(x, w, strides, padding, precision)


def _conv_tap_matmul_grad_fwd(x, w, strides, padding, precision):
    return _spatial_conv(x, w, strides, padding, precision), (x, w)


def _conv_tap_matmul_grad_bwd(strides, padding, precision, residuals, g):
    """XLA's input gradient; the kernel gradient as kh * kw matmuls of g^T with strided views.

    For wide inputs (layer3 and layer4 of ResNet-50) XLA:CPU's own kernel gradient of a 3x3
    convolution transposes both operands and ran 1.2-1.6x slower than these matmuls (128 vs
    82 ms for 32x24x8x512 -> 512); each tap's view is read in place and g is the transposed,
    shared left operand. Narrow convolutions keep XLA's, which won there.
    """
    x, w = residuals
    dx = jax.vjp(lambda x: _spatial_conv(x, w, strides, padding, precision), x)[1](g)[0]
    kh, kw, cin, cout = w.shape
    (sh, sw), (_, ho, wo, _) = strides, g.shape
    xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    taps = [jax.lax.dot_general(
        g, xp[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw, :],
        (((0, 1, 2), (0, 1, 2)), ((), ())), precision=precision)
        for i in range(kh) for j in range(kw)]
    dw = jnp.stack(taps).reshape(kh, kw, cout, cin).transpose(0, 1, 3, 2)
    return dx.astype(x.dtype), dw.astype(w.dtype)


_conv_tap_matmul_grad.defvjp(_conv_tap_matmul_grad_fwd, _conv_tap_matmul_grad_bwd)


def wide_conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                              rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                              precision=None, preferred_element_type=None,
                              **_unused) -> jax.Array:
    """``lax.conv_general_dilated`` for NHWC/HWIO spatial kernels, with the kernel gradient as
    per-tap matmuls (``_conv_tap_matmul_grad_bwd``) when the input has 256+ channels."""
    plain = (feature_group_count == 1 and preferred_element_type is None
             and all(d in (None, 1) for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
             and not isinstance(padding, str)
             and dimension_numbers in (None, jax.lax.conv_dimension_numbers(
                 lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))))
    if not plain or lhs.shape[-1] < TAP_MATMUL_MIN_CHANNELS:
        return jax.lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
            feature_group_count, precision=precision,
            preferred_element_type=preferred_element_type)
    return _conv_tap_matmul_grad(lhs, rhs, tuple(window_strides),
                                 tuple(tuple(p) for p in padding), precision)


def conv(in_features: int, out_features: int, kernel: int, stride: int = 1, pad: int = 0, *,
         dtype, param_dtype, rngs: nnx.Rngs) -> nnx.Conv:
    """Bias-free convolution with explicit symmetric padding (torch's), He fan-out init.

    Same parameters and results as ``nnx.Conv``; only the CPU schedule differs: 1x1 kernels
    run as matmuls (``pointwise_conv_general_dilated``), wider spatial kernels take their
    kernel gradient as per-tap matmuls (``wide_conv_general_dilated``)."""
    extra = {"conv_general_dilated": (pointwise_conv_general_dilated if kernel == 1
                                      else wide_conv_general_dilated)}
    return nnx.Conv(in_features, out_features, (kernel, kernel), strides=(stride, stride),
                    padding=((pad, pad), (pad, pad)), use_bias=False, dtype=dtype,
                    param_dtype=param_dtype, kernel_init=conv_kernel_init, rngs=rngs, **extra)
