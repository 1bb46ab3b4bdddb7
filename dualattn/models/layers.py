"""Layer factories shared by the backbone, the attention modules and the head.

They fix the two conventions that make our numbers line up with PyTorch's: BatchNorm with
torch's defaults, and He-normal (fan-out) convolution initialisation as torchvision uses.

The rest is how XLA:CPU should compute the same values (BENCHMARKS.md has the measurements):
convolutions whose kernel gradients are matmuls (where XLA:CPU leaves convolutions to
YNNPACK), long 1x1 kernel-gradient contractions split in two, a max pool whose gradient reads
stored indices, and ``store``, which stops XLA:CPU from recomputing elementwise chains inside
every consumer. GPUs and TPUs get XLA's own kernel and pooling gradients and no ``store``; 1x1
convolutions are matmuls everywhere (one GEMM either way there).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from dualattn import xla_flags

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


def _written_once(*xs):
    """``xs`` unchanged, passed through a ``lax.cond`` that XLA cannot see through.

    The predicate reads one element of the first floating-point array (true unless it is NaN)
    and the other branch negates twice, so both branches return ``xs`` exactly; a conditional's
    operands and results are buffers, so what feeds it is computed once and stored.
    """
    probe = next(x for x in xs if jnp.issubdtype(x.dtype, jnp.floating)).ravel()[0]
    return jax.lax.cond(probe == probe, lambda *v: v, lambda *v: tuple(-(-a) for a in v), *xs)


def store(*xs):
    """Identity that makes XLA:CPU write ``xs`` to memory once; identity elsewhere.

    Why: XLA:CPU fuses chains of elementwise ops into every consumer and recomputes them there.
    A ResNet stage's residual stream is such a chain (BN, SE scale, add, ReLU for every block),
    so each consumer re-reads all the stage's convolution outputs, and when the consumer is the
    transpose in front of a kernel-gradient matmul it reads them in transposed order: 0.9 s of
    a 6.2 s ResNet-50 step at batch 32, 384x128. ``lax.optimization_barrier`` does not help (XLA
    drops it before fusion); a conditional is a real boundary. The price is memory: values
    that were recomputed now stay alive until the backward pass (5.4 -> 6.1 GiB peak for that
    step). GPUs and TPUs get the identity: their fusion is what we want there, and a
    conditional would wait on the host.
    """
    out = jax.lax.platform_dependent(*xs, cpu=_written_once, default=lambda *v: v)
    return out if len(xs) > 1 else out[0]


@jax.custom_vjp
def stored_both_ways(x: jax.Array) -> jax.Array:
    """``store`` on the value and on its cotangent: for the residual stream between blocks,
    whose gradient is a chain through the same blocks backwards."""
    return store(x)


def _stored_both_ways_fwd(x):
    return store(x), None


def _stored_both_ways_bwd(_, g):
    return (store(g),)


stored_both_ways.defvjp(_stored_both_ways_fwd, _stored_both_ways_bwd)


# Pixels are contracted over axes 0 and 1 of (rows, columns, channels) operands.
_OVER_PIXELS = (((0, 1), (0, 1)), ((), ()))
# CPU kernel gradients of 1x1 convolutions over at least this many pixels contract them in
# PIXEL_SPLIT parts (``_contract_pixels``); below it, splitting measured slower.
PIXEL_SPLIT = 2
PIXEL_SPLIT_MIN_PIXELS = 16384


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
    # The transposed operand is stored first: read in place, not recomputed transposed. A
    # result to transpose is stored too: XLA would fold the transpose into the matmul by
    # swapping its operands, which puts the wide one first with its pixels leading, a form
    # YNNPACK does not take (layer3/4's conv1 kernel gradients ran in Eigen: 1.6 % of the step).
    if x.shape[-1] <= g.shape[-1]:
        dw = _contract_pixels(store(x), g, precision)
    else:
        dw = store(_contract_pixels(store(g), x, precision)).T
    return dx.astype(x.dtype), dw.astype(w.dtype)


_matmul_over_pixels.defvjp(_matmul_over_pixels_fwd, _matmul_over_pixels_bwd)


def _contract_pixels(a: jax.Array, b: jax.Array, precision) -> jax.Array:
    """a^T b over the pixels of (P, Q, A) and (P, Q, B) operands: the kernel gradient's matmul.

    On the CPU a long contraction is split into PIXEL_SPLIT parts contracted as one batched
    matmul and summed. A kernel gradient's output is small and its contraction long; as one
    matmul (YNNPACK) a 98304-pixel 64 -> 256 kernel gradient took 18 ms on 2 cores, twice the
    forward matmul's time, and as the batched matmul (which XLA:CPU gives to Eigen, a part per
    thread) 11 ms. At 6144 pixels the split was slower, hence PIXEL_SPLIT_MIN_PIXELS.
    """
    def whole(a, b):
        return jax.lax.dot_general(a, b, _OVER_PIXELS, precision=precision)

    p = a.shape[0]
    if p % PIXEL_SPLIT or p * a.shape[1] < PIXEL_SPLIT_MIN_PIXELS:
        return whole(a, b)

    def in_parts(a, b):
        a = a.reshape(PIXEL_SPLIT, p // PIXEL_SPLIT, *a.shape[1:])
        b = b.reshape(PIXEL_SPLIT, p // PIXEL_SPLIT, *b.shape[1:])
        return jax.lax.dot_general(a, b, (((1, 2), (1, 2)), ((0,), (0,))),
                                   precision=precision).sum(0)

    return jax.lax.platform_dependent(a, b, cpu=in_parts, default=whole)


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


# Which kernel gradient a spatial convolution takes on the CPU, by its input channels: per-tap
# matmuls from TAP_MATMUL_MIN_CHANNELS up, below that one im2col matmul per group of images.
TAP_MATMUL_MIN_CHANNELS = 128
# Bytes of im2col patches built at a time: bounds the extra memory, and a few MiB is also
# the fastest (one 384x128 image of the stem or of layer1 at a time).
IM2COL_CHUNK_BYTES = 8 << 20


def _spatial_conv(x, w, strides, padding, precision):
    return jax.lax.conv_general_dilated(x, w, strides, padding, precision=precision,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _tap_views(xp, kh, kw, strides, out_h, out_w, rows_axis=1):
    """The strided view of the padded input that each kernel tap reads, row-major over taps;
    rows and columns are axes ``rows_axis`` and ``rows_axis + 1``."""
    sh, sw = strides
    lead = (slice(None),) * rows_axis
    return [xp[(*lead, slice(i, i + sh * (out_h - 1) + 1, sh),
                slice(j, j + sw * (out_w - 1) + 1, sw))]
            for i in range(kh) for j in range(kw)]


def _kernel_grad_per_tap(xp, g, kernel_shape, strides, precision):
    """kh * kw matmuls of the stored g^T (the shared left operand) with each tap's view.

    For 128+ input channels XLA:CPU's own kernel gradient of a 3x3 convolution transposes both
    operands: 1.2-1.7x slower than these (128 vs 82 ms for 32x24x8x512 -> 512, 61 vs 35 ms for
    layer2's strided 32x96x32x128 -> 128).
    """
    kh, kw, cin, cout = kernel_shape
    g = store(g)
    taps = [jax.lax.dot_general(g, view, (((0, 1, 2), (0, 1, 2)), ((), ())),
                                precision=precision)
            for view in _tap_views(xp, kh, kw, strides, *g.shape[1:3])]
    return jnp.stack(taps).reshape(kh, kw, cout, cin).transpose(0, 1, 3, 2)


def _kernel_grad_im2col(xp, g, kernel_shape, strides, precision):
    """patches^T @ g, built for a few images at a time and summed.

    XLA:CPU's kernel gradient of narrow convolutions runs far below the matmul rate: 125 ms for
    the stem (3 channels, 7x7, stride 2) and 72 ms for a layer1 3x3 at 64 channels (batch 32,
    384x128). Built channel-major from the transposed input, the patches are a plain
    (kh*kw*cin, pixels) left operand and g is read in place: 55 and 45 ms, with one image's
    patches (7 MiB) at a time; larger groups were slower. Each group's patches are built only
    after the previous group's matmul (``store`` ties them): left free, XLA built all groups
    first (+1.2 GiB peak); a ``fori_loop`` bounds memory too but cost 5-11 ms per convolution.
    """
    kh, kw, cin, cout = kernel_shape
    n, out_h, out_w, _ = g.shape
    xt = xp.transpose(3, 0, 1, 2)  # (cin, n, rows, cols)
    per_image = kh * kw * cin * out_h * out_w * xp.dtype.itemsize
    step = max(1, min(n, IM2COL_CHUNK_BYTES // per_image))
    dw = None
    for start in range(0, n, step):
        xs = xt[:, start:start + step]
        if dw is not None:  # build these patches only once the last ones are used up
            dw, xs = store(dw, xs)
        views = _tap_views(xs, kh, kw, strides, out_h, out_w, 2)
        if len(views) > 8:  # XLA:CPU copies a 9+ way concatenation operand by operand
            views = [jnp.stack(views[r * kw:(r + 1) * kw]) for r in range(kh)]
        patches = jnp.stack(views).reshape(kh * kw * cin, -1)
        part = jnp.dot(patches, g[start:start + step].reshape(-1, cout), precision=precision)
        dw = part if dw is None else dw + part
    return dw.reshape(kh, kw, cin, cout)


_KERNEL_GRADS = {"per_tap": _kernel_grad_per_tap, "im2col": _kernel_grad_im2col}


@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv_matmul_kernel_grad(x, w, strides, padding, precision, method):
    """A plain NHWC convolution whose kernel gradient is ``_KERNEL_GRADS[method]``."""
    return _spatial_conv(x, w, strides, padding, precision)


def _conv_matmul_kernel_grad_fwd(x, w, strides, padding, precision, method):
    return _spatial_conv(x, w, strides, padding, precision), (x, w)


def _conv_matmul_kernel_grad_bwd(strides, padding, precision, method, residuals, g):
    """XLA's input gradient; our kernel gradient on the CPU, XLA's elsewhere (the convolution
    libraries of GPUs and TPUs are fast at it)."""
    x, w = residuals
    dx = jax.vjp(lambda x: _spatial_conv(x, w, strides, padding, precision), x)[1](g)[0]

    def ours(x, g):
        xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
        return _KERNEL_GRADS[method](xp, g, w.shape, strides, precision).astype(w.dtype)

    def xlas(x, g):
        return jax.vjp(lambda w: _spatial_conv(x, w, strides, padding, precision), w)[1](g)[0]

    return dx.astype(x.dtype), jax.lax.platform_dependent(x, g, cpu=ours, default=xlas)


_conv_matmul_kernel_grad.defvjp(_conv_matmul_kernel_grad_fwd, _conv_matmul_kernel_grad_bwd)


def spatial_conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                                 rhs_dilation=None, dimension_numbers=None,
                                 feature_group_count=1, precision=None,
                                 preferred_element_type=None, **_unused) -> jax.Array:
    """``lax.conv_general_dilated`` for NHWC/HWIO spatial kernels, whose kernel gradient is
    taken as matmuls (per tap from 128 input channels, im2col below) where XLA:CPU runs
    convolutions in YNNPACK, whose kernel gradients are slow; the output and the input
    gradient are XLA's. Where convolutions run in Eigen (``dualattn.xla_flags``, as our entry
    points set), and for dilated, grouped or otherwise unusual convolutions, all is XLA's."""
    plain = (feature_group_count == 1 and preferred_element_type is None
             and all(d in (None, 1) for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
             and not isinstance(padding, str)
             and dimension_numbers in (None, jax.lax.conv_dimension_numbers(
                 lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))))
    if not plain or not xla_flags.cpu_convolutions_in_ynnpack():
        return jax.lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
            feature_group_count, precision=precision,
            preferred_element_type=preferred_element_type)
    method = "per_tap" if lhs.shape[-1] >= TAP_MATMUL_MIN_CHANNELS else "im2col"
    return _conv_matmul_kernel_grad(lhs, rhs, tuple(window_strides),
                                    tuple(tuple(p) for p in padding), precision, method)


def conv(in_features: int, out_features: int, kernel: int, stride: int = 1, pad: int = 0, *,
         dtype, param_dtype, rngs: nnx.Rngs) -> nnx.Conv:
    """Bias-free convolution with explicit symmetric padding (torch's), He fan-out init.

    Same parameters and results as ``nnx.Conv``; only the CPU schedule differs: 1x1 kernels
    run as matmuls (``pointwise_conv_general_dilated``), spatial kernels take their kernel
    gradient as matmuls where that is faster (``spatial_conv_general_dilated``)."""
    extra = {"conv_general_dilated": (pointwise_conv_general_dilated if kernel == 1
                                      else spatial_conv_general_dilated)}
    return nnx.Conv(in_features, out_features, (kernel, kernel), strides=(stride, stride),
                    padding=((pad, pad), (pad, pad)), use_bias=False, dtype=dtype,
                    param_dtype=param_dtype, kernel_init=conv_kernel_init, rngs=rngs, **extra)


def max_pool(x: jax.Array, window: int, stride: int, pad: int) -> jax.Array:
    """Max pooling over a square window with -inf padding (torch's ``MaxPool2d``), NHWC.

    Same values as ``nnx.max_pool``, and the same gradient: all of it to the first maximum of
    each window in row-major order (torch's choice, and XLA's select-and-scatter's). On the CPU
    the gradient is computed differently: the forward pass stores which tap won as int8
    (``_max_pool_parts``) and the backward scatters with nine selects; XLA:CPU's
    select-and-scatter (a variadic reduce-window with index arrays, then a scatter) took
    150 ms of the ResNet-50 step at batch 32, 384x128, these take about 45. Other platforms
    keep XLA's reduce-window and its gradient.
    """
    return _max_pool(x, window, stride, pad)


def _reduce_window_max(x, window, stride, pad):
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max,
                                 (1, window, window, 1), (1, stride, stride, 1),
                                 ((0, 0), (pad, pad), (pad, pad), (0, 0)))


def _max_pool_parts(x, window, stride, pad, *, with_argmax):
    """The pooled values and, if asked, the first winning tap of each window (int8)."""
    _, h, w, _ = x.shape
    out_h, out_w = (h + 2 * pad - window) // stride + 1, (w + 2 * pad - window) // stride + 1
    xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=-jnp.inf)
    views = _tap_views(xp, window, window, (stride, stride), out_h, out_w)
    y = views[0]
    for v in views[1:]:
        y = jnp.maximum(y, v)
    if not with_argmax:
        return store(y)
    argmax = jnp.full(y.shape, len(views) - 1, jnp.int8)
    for tap in range(len(views) - 2, -1, -1):  # the lowest tap that reaches the maximum wins
        argmax = jnp.where(views[tap] == y, jnp.int8(tap), argmax)
    return store(y, argmax)


@partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x, window, stride, pad):
    return jax.lax.platform_dependent(
        x, cpu=lambda v: _max_pool_parts(v, window, stride, pad, with_argmax=False),
        default=lambda v: _reduce_window_max(v, window, stride, pad))


def _max_pool_fwd(x, window, stride, pad):
    def elsewhere(v):  # no argmax: the backward pass differentiates the reduce-window
        y = _reduce_window_max(v, window, stride, pad)
        return y, jnp.zeros(y.shape, jnp.int8)

    y, argmax = jax.lax.platform_dependent(
        x, cpu=lambda v: _max_pool_parts(v, window, stride, pad, with_argmax=True),
        default=elsewhere)
    return y, (x, argmax)


def _max_pool_bwd(window, stride, pad, residuals, g):
    x, argmax = residuals

    def scatter_to_winners(x, argmax, g):
        """Each tap's share of g (where it won), placed on the input grid by an interior pad."""
        _, h, w, _ = x.shape
        out_h, out_w = g.shape[1:3]
        zero = jnp.zeros((), g.dtype)
        dxp = None
        for tap in range(window * window):
            i, j = divmod(tap, window)
            part = jax.lax.pad(jnp.where(argmax == tap, g, zero), zero, (
                (0, 0, 0),
                (i, h + 2 * pad - i - stride * (out_h - 1) - 1, stride - 1),
                (j, w + 2 * pad - j - stride * (out_w - 1) - 1, stride - 1),
                (0, 0, 0)))
            dxp = part if dxp is None else dxp + part
        return dxp[:, pad:pad + h, pad:pad + w]

    def xlas(x, argmax, g):
        return jax.vjp(lambda v: _reduce_window_max(v, window, stride, pad), x)[1](g)[0]

    return (jax.lax.platform_dependent(x, argmax, g, cpu=scatter_to_winners, default=xlas),)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)
