"""The CPU-schedule helpers of ``dualattn.models.layers``: they must not change any value."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dualattn import xla_flags
from dualattn.models import layers


def test_store_is_the_identity_and_a_boundary_xla_keeps():
    """``store`` returns its operands bit for bit, passes gradients through unchanged, and on
    the CPU compiles to a conditional: if XLA ever learns to see through it, the chains it
    guards are fused again and this says so."""
    x = jax.random.normal(jax.random.key(0), (4, 5, 3))
    x = x.at[0, 0, 0].set(-0.0)
    idx = jnp.arange(60, dtype=jnp.int8).reshape(4, 5, 3)

    fn = jax.jit(lambda x, i: layers.store(jnp.exp(x) * 2.0, i + 1))
    y, j = fn(x, idx)
    np.testing.assert_array_equal(y, jnp.exp(x) * 2.0)
    np.testing.assert_array_equal(j, idx + 1)
    np.testing.assert_array_equal(jax.jit(layers.store)(x), x)
    assert np.signbit(jax.jit(layers.store)(x)[0, 0, 0])  # -0.0 stays -0.0

    grad = jax.jit(jax.grad(lambda x: jnp.sum(jnp.sin(layers.stored_both_ways(x * 3.0)))))(x)
    np.testing.assert_allclose(grad, 3.0 * jnp.cos(x * 3.0), rtol=1e-6)
    if jax.default_backend() == "cpu":
        assert "conditional" in fn.lower(x, idx).compile().as_text()


def test_store_passes_nan_through():
    """The conditional's other branch (taken when the probed element is NaN) is the identity
    too."""
    x = jnp.array([jnp.nan, 1.0, -2.0])
    np.testing.assert_array_equal(jax.jit(layers.store)(x), x)


@pytest.mark.parametrize("shape", [(2, 12, 8, 5), (3, 9, 7, 4)])
def test_max_pool_matches_reduce_window_and_its_gradient(shape):
    """Values equal ``nnx.max_pool``'s; the gradient goes to the first maximum of each window,
    as XLA's select-and-scatter (and torch) send it, also when windows tie, which ReLU zeros
    make common, and at the -inf padded borders."""
    x = jax.nn.relu(jax.random.normal(jax.random.key(1), shape))
    x = x.at[:, :, : shape[2] // 2].set(0.0)  # whole windows of ties
    g = jax.random.normal(jax.random.key(2), (shape[0], (shape[1] + 1) // 2,
                                              (shape[2] + 1) // 2, shape[3]))

    def reference(x):
        return nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))

    def ours(x):
        return layers.max_pool(x, 3, 2, 1)

    np.testing.assert_array_equal(jax.jit(ours)(x), jax.jit(reference)(x))
    dx_ours, dx_ref = (jax.jit(lambda x, g, f=f: jax.vjp(f, x)[1](g)[0])(x, g)
                       for f in (ours, reference))
    # Where overlapping windows pick the same input, the shares are summed in another order.
    np.testing.assert_allclose(dx_ours, dx_ref, rtol=1e-6, atol=1e-6)
    assert np.count_nonzero(dx_ours) == np.count_nonzero(dx_ref)


def test_gpus_and_tpus_keep_xlas_convolution_and_pooling_gradients(monkeypatch):
    """The matmul kernel gradients and the nine-select pooling gradient are CPU schedules: a
    step lowered for a GPU or TPU has XLA's convolution kernel gradient and select-and-scatter
    and none of our matmuls. (Lowering needs no such device.)"""
    monkeypatch.setenv("XLA_FLAGS", "")  # XLA's default: CPU convolutions in YNNPACK
    conv = layers.conv(16, 8, 3, 1, 1, dtype=jnp.float32, param_dtype=jnp.float32,
                       rngs=nnx.Rngs(0))
    x = jnp.ones((2, 8, 8, 16))

    def loss(model, x):
        return jnp.sum(layers.max_pool(model(x), 3, 2, 1) ** 2)

    step = jax.jit(lambda model, x: nnx.grad(loss)(model, x))
    lowered = {p: step.trace(conv, x).lower(lowering_platforms=(p,)).as_text()
               for p in ("cpu", "cuda", "tpu")}
    assert "dot_general" in lowered["cpu"] and "select_and_scatter" not in lowered["cpu"]
    for platform in ("cuda", "tpu"):
        text = lowered[platform]
        assert "dot_general" not in text, platform
        assert text.count("stablehlo.convolution") == 2, platform  # output, kernel gradient
        assert "select_and_scatter" in text, platform


def test_where_cpu_convolutions_run_in_eigen_spatial_kernels_are_xlas_entirely(monkeypatch):
    """Our matmul kernel gradients stand in for YNNPACK's slow ones only; with the flag our
    entry points set (convolutions in Eigen) the CPU step has XLA's convolution gradients."""
    conv = layers.conv(16, 8, 3, 1, 1, dtype=jnp.float32, param_dtype=jnp.float32,
                       rngs=nnx.Rngs(0))
    x = jnp.ones((2, 8, 8, 16))
    texts = {}
    for mode, flags in (("ynnpack", ""), ("eigen", xla_flags.EIGEN_CPU_CONVOLUTIONS)):
        monkeypatch.setenv("XLA_FLAGS", flags)
        step = jax.jit(lambda model, x: nnx.grad(lambda m: jnp.sum(m(x) ** 2))(model))
        texts[mode] = step.trace(conv, x).lower(lowering_platforms=("cpu",)).as_text()
    assert "dot_general" in texts["ynnpack"]
    assert "dot_general" not in texts["eigen"]
    assert texts["eigen"].count("stablehlo.convolution") == 2  # output, kernel gradient


@pytest.mark.parametrize("rows", [6, 5])
def test_kernel_gradient_contractions_split_over_pixels_on_the_cpu(rows, monkeypatch):
    """A long pixel contraction runs as two halves summed (an even number of pixel rows; odd
    ones stay whole): the same kernel gradient to float rounding, through the 1x1 conv too."""
    monkeypatch.setattr(layers, "PIXEL_SPLIT_MIN_PIXELS", 1)
    a = jax.random.normal(jax.random.key(0), (rows, 4, 8))
    b = jax.random.normal(jax.random.key(1), (rows, 4, 24))
    contract = jax.jit(lambda a, b: layers._contract_pixels(a, b, None))
    np.testing.assert_allclose(contract(a, b), jnp.einsum("pqa,pqb->ab", a, b), rtol=1e-5,
                               atol=1e-5)
    text = contract.lower(a, b).as_text()
    assert ("batching_dims" in text) == (rows % 2 == 0)

    conv = layers.conv(8, 24, 1, dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
    plain = nnx.Conv(8, 24, (1, 1), use_bias=False, rngs=nnx.Rngs(1))
    plain.kernel[...] = conv.kernel[...]
    x = a[None]  # one image of rows x 4 pixels
    grads = [nnx.grad(lambda m: jnp.sum(jnp.sin(m(x))))(m).kernel[...] for m in (conv, plain)]
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-5, atol=1e-5)


def test_narrowing_kernel_gradients_keep_the_narrow_operand_first_on_the_cpu():
    """For a narrowing 1x1 convolution the kernel gradient is g^T x, transposed after: XLA
    must not fold that transpose into the matmul (it would make the wide x the transposed
    operand, which YNNPACK does not take), so the compiled step's matmul yields (out, in)."""
    conv = layers.conv(32, 8, 1, dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (2, 6, 4, 32))
    step = jax.jit(lambda model, x: nnx.grad(lambda m: jnp.sum(jnp.sin(m(x))))(model))
    text = step.trace(conv, x).lower(lowering_platforms=("cpu",)).compile().as_text()
    dots = re.findall(r"= f32\[([\d,]+)\]\{[\d,]*\} dot\(", text)
    assert "8,32" in dots and "32,8" not in dots, dots
