"""Mixed precision whose kernel gradients are float32 sums: the forward pass and the input's
gradient are Flax's own in bfloat16, the kernel's gradient is the exact gradient of the
bfloat16 computation, accumulated in float32."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dualattn.models import layers, mixed_precision

DN = ("NHWC", "HWIO", "NHWC")


CASES = [(1, 1, 0, 9), (1, 2, 0, 9), (3, 1, 1, 9), (3, 2, 1, 9), (3, 2, 1, 8), (7, 2, 3, 13),
         (7, 2, 3, 12)]


@pytest.mark.parametrize("wrt", ["kernel", "input"])
@pytest.mark.parametrize("kernel,stride,pad,size", CASES)
def test_the_written_out_gradients_are_the_convolutions(wrt, kernel, stride, pad, size):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, size, size - 2, 3)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((kernel, kernel, 3, 4)), jnp.float32)
    strides, padding = (stride, stride), ((pad, pad), (pad, pad))

    def conv(x, w):
        return jax.lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=DN,
                                            precision="highest")

    y, vjp = jax.vjp(conv, x, w)
    g = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
    expected = vjp(g)[0 if wrt == "input" else 1]
    with jax.default_matmul_precision("highest"):
        ours = (mixed_precision.input_gradient(g, w, x.shape, strides, padding) if wrt == "input"
                else mixed_precision.kernel_gradient(x, g, (kernel, kernel), strides, padding))
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def layer_pair(kind):
    """The same layer computing in bf16, from f32 parameters (ours) and as Flax's own."""
    def make(mixed):
        rngs = nnx.Rngs(0)
        if kind == "conv":
            if mixed:
                return layers.conv(3, 8, 3, 2, 1, dtype=jnp.bfloat16, param_dtype=jnp.float32,
                                   rngs=rngs)
            return nnx.Conv(3, 8, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)),
                            use_bias=False, dtype=jnp.bfloat16, kernel_init=layers.conv_kernel_init,
                            rngs=rngs)
        if mixed:
            return layers.linear(16, 8, dtype=jnp.bfloat16, param_dtype=jnp.float32, rngs=rngs)
        return nnx.Linear(16, 8, dtype=jnp.bfloat16, rngs=rngs)
    return make(True), make(False)


@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_forward_and_input_gradient_are_flaxs_and_the_kernel_gradient_is_summed_in_f32(kind):
    ours, flax_own = layer_pair(kind)
    shape = (4, 9, 7, 3) if kind == "conv" else (32, 16)
    x = jnp.asarray(np.random.default_rng(1).standard_normal(shape), jnp.bfloat16)

    def loss(layer, x):
        return jnp.sum(jnp.sin(layer(x).astype(jnp.float32)))

    y_ours, y_flax = ours(x), flax_own(x)
    assert y_ours.dtype == jnp.bfloat16 or kind == "linear"  # the bias adds in f32
    np.testing.assert_allclose(np.asarray(y_ours, np.float32), np.asarray(y_flax, np.float32),
                               rtol=1e-2, atol=1e-2)
    (g_ours, dx_ours), (g_flax, dx_flax) = (nnx.grad(loss, argnums=(0, 1))(m, x)
                                             for m in (ours, flax_own))
    np.testing.assert_allclose(np.asarray(dx_ours, np.float32), np.asarray(dx_flax, np.float32),
                               rtol=2e-2, atol=2e-2)
    kernel_ours, kernel_flax = g_ours.kernel[...], g_flax.kernel[...]
    assert kernel_ours.dtype == jnp.float32
    # The same sum, ours accumulated and kept in f32, Flax's rounded to bf16 on the way.
    scale = float(jnp.abs(kernel_ours).max())
    np.testing.assert_allclose(kernel_ours, kernel_flax, atol=2 ** -7 * scale)


def test_a_float32_layer_is_left_as_flax_builds_it():
    conv = layers.conv(3, 8, 3, dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
    assert conv.conv_general_dilated is jax.lax.conv_general_dilated
    linear = layers.linear(4, 2, dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
    assert linear.dot_general is jax.lax.dot_general
