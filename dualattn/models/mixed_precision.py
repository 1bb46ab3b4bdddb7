"""Mixed precision whose gradients are summed across devices in float32.

With ``model.dtype="bfloat16"`` the network computes in bfloat16 from float32 parameters.
Flax casts a kernel to bfloat16 before its convolution or matmul, so the kernel's gradient
comes out of the backward pass in bfloat16, and on a data-parallel mesh the compilers sum
the per-device partial gradients right there: the gradient all-reduce ran in bfloat16 on
both the GPU and the TPU compiler (60 MiB of it at the Market settings), so the result
depended on the device count. PyTorch AMP with DDP sums float32 gradients.

Here the layer receives its float32 kernel, casts it itself, and computes the kernel's
gradient with bfloat16 operands and float32 accumulation and output
(``preferred_element_type``): the partial sums are float32 where the compilers all-reduce
them, at the speed of a bfloat16 matmul. The input's gradient and the forward pass are what
they were. ``dualattn.models.layers`` uses these hooks (``promote_dtype`` and
``conv_general_dilated`` / ``dot_general``, Flax's own) whenever a layer computes in a
narrower dtype than its parameters.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp


def promote_inputs(args, /, *, dtype=None, inexact=True):
    """Flax's ``promote_dtype`` for these layers: the input goes to ``dtype``, the parameters
    stay as they are stored (the operation below casts them)."""
    inputs, *params = args
    return [inputs if dtype is None else jnp.asarray(inputs, dtype), *params]


# ---------------------------------------------------------------------------------------------
# Convolutions (NHWC input, HWIO kernel, no dilation or groups: the network's)


def kernel_gradient(lhs, g, kernel_size, window_strides, padding) -> jax.Array:
    """The kernel's gradient of ``conv(lhs, w)`` given the output's cotangent ``g``,
    accumulated and returned in float32: a convolution of the input with ``g`` dilated by the
    strides, batch and features swapped."""
    pads = []
    for axis, (stride, (low, high)) in enumerate(zip(window_strides, padding, strict=True)):
        extent = lhs.shape[1 + axis] + low + high - stride * (g.shape[1 + axis] - 1)
        pads.append((low, high - (extent - kernel_size[axis])))  # the rows no window reaches
    return jax.lax.conv_general_dilated(
        lhs, g, window_strides=(1, 1), padding=pads, rhs_dilation=tuple(window_strides),
        dimension_numbers=("CHWN", "IHWO", "HWNC"), preferred_element_type=jnp.float32)


def input_gradient(g, rhs, input_shape, window_strides, padding) -> jax.Array:
    """The input's gradient of ``conv(x, rhs)`` given the output's cotangent ``g``: ``g``
    dilated by the strides, convolved with the kernel flipped in space, its input and output
    features swapped. Written out (as ``kernel_gradient``) because ``jax.linear_transpose``
    cannot transpose a custom-VJP inner convolution such as ``dualattn.models.cpu_conv``'s,
    and ``jax.vjp`` would trace the forward pass again."""
    pads = []
    for axis, (stride, (low, _)) in enumerate(zip(window_strides, padding, strict=True)):
        k = rhs.shape[axis]
        high = input_shape[1 + axis] + low - 1 - stride * (g.shape[1 + axis] - 1)
        pads.append((k - 1 - low, high))
    return jax.lax.conv_general_dilated(
        g, jnp.flip(rhs, (0, 1)), window_strides=(1, 1), padding=pads,
        lhs_dilation=tuple(window_strides), dimension_numbers=("NHWC", "HWOI", "NHWC"))


@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv(lhs, rhs, window_strides, padding, inner):
    return inner(lhs, rhs.astype(lhs.dtype), window_strides, padding)


# With symbolic zeros, the forward rule learns whether the input is differentiated (the
# network's first convolution: its input is the image, which is not): its residuals then say
# so by their structure (None), and the backward pass computes no input gradient for it.
def _input_needed(x) -> dict | None:
    return {} if x.perturbed else None


def _conv_fwd(lhs, rhs, window_strides, padding, inner):
    y = _conv(lhs.value, rhs.value, window_strides, padding, inner)
    return y, (lhs.value, rhs.value, _input_needed(lhs))


def _conv_bwd(window_strides, padding, inner, residuals, g):
    lhs, rhs, needed = residuals
    g = g.astype(lhs.dtype)
    d_lhs = None if needed is None else input_gradient(g, rhs.astype(lhs.dtype), lhs.shape,
                                                         window_strides, padding)
    d_rhs = kernel_gradient(lhs, g, rhs.shape[:2], window_strides, padding)
    return d_lhs, d_rhs.astype(rhs.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd, symbolic_zeros=True)


def conv_general_dilated(inner=jax.lax.conv_general_dilated):
    """A ``conv_general_dilated`` for ``nnx.Conv`` taking the float32 kernel (see
    ``promote_inputs``): ``inner`` computes the forward pass, ``input_gradient`` and
    ``kernel_gradient`` the backward."""

    def conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
             dimension_numbers=None, feature_group_count=1, precision=None,
             preferred_element_type=None, **kwargs):
        if (feature_group_count != 1 or lhs_dilation not in (None, (1, 1))
                or rhs_dilation not in (None, (1, 1)) or lhs.dtype == rhs.dtype):
            return inner(lhs, rhs.astype(lhs.dtype), window_strides, padding, lhs_dilation,
                         rhs_dilation, dimension_numbers, feature_group_count,
                         precision=precision, preferred_element_type=preferred_element_type,
                         **kwargs)

        def plain(x, w, strides, pads):
            return inner(x, w, strides, pads, dimension_numbers=dimension_numbers,
                         precision=precision, **kwargs)

        return _conv(lhs, rhs, tuple(window_strides), tuple(map(tuple, padding)), plain)

    return conv


# ---------------------------------------------------------------------------------------------
# Matmuls (nnx.Linear: the input's last axis against the kernel's first)


@jax.custom_vjp
def _matmul(x, kernel):
    return jnp.matmul(x, kernel.astype(x.dtype))


def _matmul_fwd(x, kernel):
    return _matmul(x.value, kernel.value), (x.value, kernel.value, _input_needed(x))


def _matmul_bwd(residuals, g):
    x, kernel, needed = residuals
    g = g.astype(x.dtype)
    d_x = None if needed is None else jnp.matmul(g, kernel.astype(x.dtype).T)
    d_kernel = jax.lax.dot_general(x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1]),
                                   (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)
    return d_x, d_kernel.astype(kernel.dtype)


_matmul.defvjp(_matmul_fwd, _matmul_bwd, symbolic_zeros=True)


def dot_general(x, kernel, dimension_numbers, precision=None, preferred_element_type=None,
                **kwargs):
    """A ``dot_general`` for ``nnx.Linear`` taking the float32 kernel: its gradient is
    accumulated and returned in float32."""
    (contract_x, contract_k), batch = dimension_numbers
    if (tuple(contract_x) != (x.ndim - 1,) or tuple(contract_k) != (0,) or batch != ((), ())
            or kernel.ndim != 2 or x.dtype == kernel.dtype):
        return jax.lax.dot_general(x, kernel.astype(x.dtype), dimension_numbers, precision,
                                   preferred_element_type=preferred_element_type, **kwargs)
    return _matmul(x, kernel)
