"""A 1x1 convolution written for XLA:CPU: the one CPU speed trick kept, behind one switch.

The network is plain Flax; its convolutions accept a
``conv_general_dilated`` in ``lax.conv_general_dilated``'s signature, as ``nnx.Conv`` does.
``conv_general_dilated`` here computes the same values. It differs from XLA's own convolution
only for 1x1 kernels on the CPU, where it is a matmul whose gradient is written for XLA:CPU:

- The kernel gradient contracts the pixels with the narrower of (input, output gradient) as
  the transposed operand. XLA:CPU's matmul library (YNNPACK) wants the contracted axis last on
  the left operand, so that operand is physically transposed first; JAX's own rule transposes
  the output gradient, which is 2-4x wider for the expanding convolutions (conv3, downsample).
- Long kernel-gradient contractions (16k+ pixels) run as a batched matmul of two halves,
  which XLA:CPU hands to Eigen with one half per thread.
- The convolution's input and output gradient are written to memory once (``store``): XLA:CPU
  otherwise fuses a block's whole elementwise chain (BN, SE scale, residual add, ReLU) into
  every consumer and recomputes it there, in transposed order in front of a kernel gradient.

The switch is ``config.model.cpu_schedule`` ("auto": on when JAX's default backend is the CPU),
resolved once when the model is built (``dualattn.run.model.create_model``). With it on, the
network has custom gradients, so forward-mode differentiation (``jax.jvp``) needs it off.
BENCHMARKS.md has the measured gain.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

CHOICES = ("auto", "on", "off")

# Pixels are contracted over axes 0 and 1 of (rows, columns, channels) operands.
_OVER_PIXELS = (((0, 1), (0, 1)), ((), ()))
# Kernel gradients over at least this many pixels contract them in two halves (below it,
# splitting measured slower).
PIXEL_SPLIT_MIN_PIXELS = 16384


def enabled(choice: str | bool, backend: str | None = None) -> bool:
    """Resolve ``config.model.cpu_schedule``: "on", "off", or "auto" (on for the CPU backend);
    booleans are taken for on and off."""
    if isinstance(choice, bool):
        choice = "on" if choice else "off"
    if choice not in CHOICES:
        raise ValueError(f"model.cpu_schedule must be one of {CHOICES}, got {choice!r}")
    if choice == "auto":
        return (backend or jax.default_backend()) == "cpu"
    return choice == "on"


def store(*xs):
    """``xs`` unchanged, written to memory once: passed through a ``lax.cond`` whose branches
    both return them exactly. A conditional's operands are buffers, so what feeds it is
    computed once; ``lax.optimization_barrier`` does not do this (XLA drops it before
    fusion). The predicate reads one element (true unless it is NaN); the other branch
    negates twice."""
    probe = next(x for x in xs if jnp.issubdtype(x.dtype, jnp.floating)).ravel()[0]
    twice_negated = lambda *v: tuple(-(-a) for a in v)  # noqa: B002, E731
    out = jax.lax.cond(probe == probe, lambda *v: v, twice_negated, *xs)
    return out if len(xs) > 1 else out[0]


def _contract_pixels(a: jax.Array, b: jax.Array, precision) -> jax.Array:
    """a^T b over the pixels of (P, Q, A) and (P, Q, B) operands; long ones in two halves."""
    p = a.shape[0]
    if p % 2 or p * a.shape[1] < PIXEL_SPLIT_MIN_PIXELS:
        return jax.lax.dot_general(a, b, _OVER_PIXELS, precision=precision)
    a = a.reshape(2, p // 2, *a.shape[1:])
    b = b.reshape(2, p // 2, *b.shape[1:])
    return jax.lax.dot_general(a, b, (((1, 2), (1, 2)), ((0,), (0,))),
                               precision=precision).sum(0)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _matmul_over_pixels(x: jax.Array, w: jax.Array, precision) -> jax.Array:
    """(P, Q, C) x (C, O) -> (P, Q, O): a 1x1 convolution with the pixels flattened to P x Q."""
    return jnp.einsum("pqc,co->pqo", store(x), w, precision=precision)


def _matmul_over_pixels_fwd(x, w, precision):
    x = store(x)
    return jnp.einsum("pqc,co->pqo", x, w, precision=precision), (x, w)


def _matmul_over_pixels_bwd(precision, residuals, g):
    x, w = residuals
    g = store(g)
    dx = jnp.einsum("pqo,co->pqc", g, w, precision=precision)
    if x.shape[-1] <= g.shape[-1]:
        dw = _contract_pixels(x, g, precision)
    else:
        # The (out, in) result is stored before its transpose, or XLA folds the transpose into
        # the matmul by swapping its operands, a form YNNPACK does not take.
        dw = store(_contract_pixels(g, x, precision)).T
    return dx.astype(x.dtype), dw.astype(w.dtype)


_matmul_over_pixels.defvjp(_matmul_over_pixels_fwd, _matmul_over_pixels_bwd)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         precision=None, preferred_element_type=None, **kwargs) -> jax.Array:
    """``lax.conv_general_dilated`` (NHWC input, HWIO kernel), with 1x1 kernels as matmuls.
    ``kwargs`` (nnx.Conv passes ``out_sharding``) go to XLA's convolution."""
    pointwise = (rhs.shape[:2] == (1, 1) and feature_group_count == 1
                 and all(tuple(p) == (0, 0) for p in padding)
                 and preferred_element_type is None
                 and lhs_dilation in (None, (1, 1)) and rhs_dilation in (None, (1, 1)))
    if not pointwise:
        return jax.lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
            feature_group_count, precision=precision,
            preferred_element_type=preferred_element_type, **kwargs)
    sh, sw = window_strides
    x = lhs[:, ::sh, ::sw, :] if (sh, sw) != (1, 1) else lhs
    n, h, w, c = x.shape
    y = _matmul_over_pixels(x.reshape(n * h, w, c), rhs[0, 0], precision)
    return y.reshape(n, h, w, rhs.shape[-1])
