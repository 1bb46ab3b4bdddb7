"""The building blocks against PyTorch's, and the network under forward-mode differentiation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from dualattn.models import ReIDNet, layers

# Device-dependent: run on GPUs by benchmarks.gpu_check (pytest -m gpu).
pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("shape", [(2, 12, 8, 5), (3, 9, 7, 4)])
def test_max_pool_is_torchs_with_its_gradient(shape):
    """Values equal torch's MaxPool2d(3, 2, 1); the gradient goes to the first maximum of each
    window, as torch sends it, also when windows tie (ReLU zeros make that common) and at the
    padded borders."""
    x = np.array(jax.nn.relu(jax.random.normal(jax.random.key(1), shape)))
    x[:, :, : shape[2] // 2] = 0.0  # whole windows of ties
    y, vjp = jax.vjp(lambda v: layers.max_pool(v, 3, 2, 1), jnp.asarray(x))
    g = np.asarray(jax.random.normal(jax.random.key(2), y.shape))
    (dx,) = vjp(jnp.asarray(g))

    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_()
    yt = torch.nn.functional.max_pool2d(xt, 3, 2, 1)
    yt.backward(torch.from_numpy(g.transpose(0, 3, 1, 2).copy()))
    np.testing.assert_array_equal(y, yt.detach().numpy().transpose(0, 2, 3, 1))
    np.testing.assert_allclose(dx, xt.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kernel,stride", [(1, 1), (1, 2), (3, 1), (3, 2), (7, 2)])
def test_conv_is_torchs_conv2d_with_symmetric_padding(kernel, stride):
    """Odd sizes make Flax's 'SAME' and torch's padding differ: ours must be torch's."""
    conv = layers.conv(4, 6, kernel, stride, kernel // 2, dtype=jnp.float32,
                       param_dtype=jnp.float32, rngs=nnx.Rngs(0))
    x = np.asarray(jax.random.normal(jax.random.key(3), (2, 11, 9, 4)))
    w = np.asarray(conv.kernel[...]).transpose(3, 2, 0, 1)
    expected = torch.nn.functional.conv2d(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()),
                                          torch.from_numpy(w.copy()), stride=stride,
                                          padding=kernel // 2)
    np.testing.assert_allclose(conv(jnp.asarray(x)), expected.numpy().transpose(0, 2, 3, 1),
                               rtol=1e-5, atol=1e-5)


def test_the_network_differentiates_in_forward_mode(tiny_model_kwargs):
    """jax.jvp through the whole network (train mode, SE, self-attention with its gate open,
    BNNeck) agrees with reverse mode: <J d, u> = <d, J^T u> for random d and u. A custom
    gradient anywhere in the network would make jvp fail."""
    model = ReIDNet(5, **tiny_model_kwargs, rngs=nnx.Rngs(0))
    model.attention.alpha[...] = jnp.asarray(0.5)  # open the attention path
    graphdef, state = nnx.split(model)
    x = jax.random.normal(jax.random.key(0), (4, 64, 32, 3))
    d = jax.random.normal(jax.random.key(1), x.shape)

    def outputs(state, x):
        out = nnx.merge(graphdef, state, copy=True)(x, train=True)
        return jnp.concatenate([out.features, out.logits], axis=1)

    value, forward = jax.jit(lambda s, x, d: jax.jvp(lambda v: outputs(s, v), (x,), (d,)))(
        state, x, d)
    u = jax.random.normal(jax.random.key(2), value.shape)
    (backward,) = jax.jit(lambda s, x, u: jax.vjp(lambda v: outputs(s, v), x)[1](u))(state, x, u)
    lhs, rhs = float(jnp.vdot(forward, u)), float(jnp.vdot(d, backward))
    assert abs(lhs) > 0
    assert abs(lhs - rhs) <= 1e-4 * abs(lhs)
