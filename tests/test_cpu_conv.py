"""The XLA:CPU 1x1 convolution computes what XLA's convolution computes, and is switched as
configured."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import tiny
from dualattn.models import cpu_conv, layers
from dualattn.run.model import create_model


@pytest.mark.parametrize("kernel,stride,cin,cout", [
    (1, 1, 8, 24), (1, 2, 8, 24), (1, 1, 40, 8),  # widening, strided, narrowing 1x1
    (3, 2, 8, 8), (7, 2, 3, 8),                   # spatial kernels: XLA's convolution
])
def test_values_and_both_gradients_are_xlas(kernel, stride, cin, cout):
    def build(fn):
        return layers.conv(cin, cout, kernel, stride, kernel // 2, dtype=jnp.float32,
                           param_dtype=jnp.float32, conv_general_dilated=fn, rngs=nnx.Rngs(0))

    ours, plain = build(cpu_conv.conv_general_dilated), build(jax.lax.conv_general_dilated)
    x = jax.random.normal(jax.random.key(2), (3, 9, 8, cin))

    def loss(conv, x):
        y = conv(x)
        return jnp.sum(y * jnp.sin(y))

    (g_ours, dx_ours), (g_plain, dx_plain) = (
        jax.jit(nnx.grad(loss, argnums=(0, 1)))(m, x) for m in (ours, plain))
    def close(a, b):  # float32 rounding of sums in another order: relative to the largest entry
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-6 * float(jnp.abs(b).max()))

    close(jax.jit(ours)(x), plain(x))
    close(dx_ours, dx_plain)
    close(g_ours.kernel[...], g_plain.kernel[...])


@pytest.mark.parametrize("rows", [6, 5])
def test_long_contractions_split_in_halves_to_the_same_result(rows, monkeypatch):
    """Two halves summed for an even number of pixel rows; odd ones stay whole."""
    monkeypatch.setattr(cpu_conv, "PIXEL_SPLIT_MIN_PIXELS", 1)
    a = jax.random.normal(jax.random.key(0), (rows, 4, 8))
    b = jax.random.normal(jax.random.key(1), (rows, 4, 24))
    contract = jax.jit(lambda a, b: cpu_conv._contract_pixels(a, b, None))
    np.testing.assert_allclose(contract(a, b), jnp.einsum("pqa,pqb->ab", a, b), rtol=1e-5,
                               atol=1e-5)
    assert ("batching_dims" in contract.lower(a, b).as_text()) == (rows % 2 == 0)


def test_store_returns_its_operands_bit_for_bit_through_a_conditional():
    x = jax.random.normal(jax.random.key(0), (4, 5, 3)).at[0, 0, 0].set(-0.0)
    stored = jax.jit(cpu_conv.store)
    np.testing.assert_array_equal(stored(x), x)
    assert np.signbit(stored(x)[0, 0, 0])  # -0.0 stays -0.0
    assert "stablehlo.case" in stored.lower(x).as_text() or "cond" in stored.lower(x).as_text()


def test_the_switch_is_resolved_once_from_the_config():
    assert cpu_conv.enabled("auto", "cpu") and not cpu_conv.enabled("auto", "gpu")
    assert cpu_conv.enabled("on", "gpu") and not cpu_conv.enabled("off", "cpu")
    assert cpu_conv.enabled(True, "gpu") and not cpu_conv.enabled(False, "cpu")
    with pytest.raises(ValueError, match="model.cpu_schedule"):
        cpu_conv.enabled("yes")
    c = tiny.get_config()
    for choice, expected in (("on", cpu_conv.conv_general_dilated),
                             ("off", jax.lax.conv_general_dilated)):
        c.model.cpu_schedule = choice
        model = create_model(c, 3)
        assert model.backbone.layer1[0].conv1.conv_general_dilated is expected
        assert model.attention.value_conv.conv_general_dilated is expected
