import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dualattn.models import SpatialSelfAttention, SqueezeExcitation

# Device-dependent: run on GPUs by benchmarks.gpu_check (pytest -m gpu).
pytestmark = pytest.mark.gpu


def numpy_bn_train(x, scale, bias, eps=1e-5):
    mean = x.mean(axis=(0, 1, 2))
    var = x.var(axis=(0, 1, 2))
    return (x - mean) / np.sqrt(var + eps) * scale + bias


def test_self_attention_is_identity_at_initialisation():
    module = SpatialSelfAttention(32, reduction=8, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (2, 6, 4, 32))
    assert float(module.alpha[...]) == 0.0
    np.testing.assert_array_equal(module(x, train=True), x)
    np.testing.assert_array_equal(module(x, train=False), x)


def test_self_attention_matches_numpy_definition():
    c, reduction = 16, 4
    module = SpatialSelfAttention(c, reduction=reduction, rngs=nnx.Rngs(0))
    module.alpha[...] = jnp.asarray(0.7)
    # Non-trivial BN affine parameters so a wrong branch wiring cannot cancel out.
    for bn, seed in ((module.query_bn, 1), (module.key_bn, 2), (module.value_bn, 3)):
        keys = jax.random.split(jax.random.key(seed))
        bn.scale[...] = 1.0 + 0.1 * jax.random.normal(keys[0], bn.scale.shape)
        bn.bias[...] = 0.1 * jax.random.normal(keys[1], bn.bias.shape)
    x = np.asarray(jax.random.normal(jax.random.key(9), (2, 5, 3, c)))
    y = np.asarray(module(jnp.asarray(x), train=True))

    def branch(conv, bn):
        w = np.asarray(conv.kernel[...])[0, 0]  # 1x1 conv == matmul over channels
        return numpy_bn_train(x @ w, np.asarray(bn.scale[...]), np.asarray(bn.bias[...]))

    q = branch(module.query_conv, module.query_bn).reshape(2, 15, c // reduction)
    k = branch(module.key_conv, module.key_bn).reshape(2, 15, c // reduction)
    v = branch(module.value_conv, module.value_bn).reshape(2, 15, c)
    logits = q @ k.transpose(0, 2, 1) / np.sqrt(c // reduction)
    attn = np.exp(logits - logits.max(-1, keepdims=True))
    attn /= attn.sum(-1, keepdims=True)  # over keys
    expected = 0.7 * (attn @ v).reshape(x.shape) + x
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)


def test_attention_rows_are_distributions_over_keys():
    module = SpatialSelfAttention(16, reduction=2, rngs=nnx.Rngs(0))
    attn = module.attention_map(jax.random.normal(jax.random.key(0), (3, 4, 2, 16)), train=True)
    assert attn.shape == (3, 8, 8)
    np.testing.assert_allclose(attn.sum(-1), 1.0, rtol=1e-6)
    assert float(attn.min()) >= 0.0


def test_attention_softmax_runs_in_f32_under_bf16():
    module = SpatialSelfAttention(16, reduction=2, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (2, 4, 2, 16)).astype(jnp.bfloat16)
    assert module.attention_map(x, train=True).dtype == jnp.float32
    assert module(x, train=True).dtype == jnp.bfloat16


def test_squeeze_excitation_matches_numpy_definition():
    module = SqueezeExcitation(32, reduction=16, rngs=nnx.Rngs(0))
    x = np.asarray(jax.random.normal(jax.random.key(0), (2, 3, 5, 32)))
    y = np.asarray(module(jnp.asarray(x)))
    def dense(layer, h):
        return h @ np.asarray(layer.kernel[...]) + np.asarray(layer.bias[...])

    hidden = np.maximum(dense(module.fc1, x.mean(axis=(1, 2))), 0)
    gate = 1 / (1 + np.exp(-dense(module.fc2, hidden)))
    assert module.fc1.kernel.shape == (32, 2)
    np.testing.assert_allclose(y, x * gate[:, None, None, :], rtol=1e-5, atol=1e-6)
