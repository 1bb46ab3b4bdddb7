import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from configs import common
from dualattn.models import ReIDNet, ReIDOutput, count_params
from dualattn.models.attention import reduced_channels
from dualattn.training.losses import objective
from tests.helpers import se_params

# Device-dependent: run on GPUs by benchmarks.gpu_check (pytest -m gpu).
pytestmark = pytest.mark.gpu

NUM_CLASSES = 5


def sa_params(c, reduction=8):
    """Q and K: 1x1 conv C -> C/r + BN; V: 1x1 conv C -> C + BN; plus alpha."""
    d = reduced_channels(c, reduction)
    return 2 * (c * d + 2 * d) + (c * c + 2 * c) + 1


def make(tiny, **overrides):
    return ReIDNet(NUM_CLASSES, **{**tiny, **overrides}, rngs=nnx.Rngs(0))


def test_full_size_parameter_budget():
    model = nnx.eval_shape(lambda: ReIDNet(751, rngs=nnx.Rngs(0)))
    # backbone 23,508,032 + SE 2,530,992 + SA 5,248,001 + BNNeck scale 2,048 + FC 2048 x 751
    assert sa_params(2048) == 5_248_001
    assert count_params(model) == 23_508_032 + 2_530_992 + 5_248_001 + 2048 + 2048 * 751


def test_each_switch_removes_exactly_its_parameters(tiny_model_kwargs):
    full = count_params(make(tiny_model_kwargs))
    c = 256
    assert full - count_params(make(tiny_model_kwargs, use_se=False)) == se_params((1, 1, 1, 1), 8)
    assert full - count_params(make(tiny_model_kwargs, use_sa=False)) == sa_params(c)
    assert full - count_params(make(tiny_model_kwargs, bnneck=False)) == c  # BN scale only
    plain = make(tiny_model_kwargs, use_se=False, use_sa=False, bnneck=False)
    assert plain.attention is None and plain.bottleneck is None


def test_train_mode_returns_before_bn_feature_and_logits(tiny_model_kwargs):
    model = make(tiny_model_kwargs)
    out = model(jnp.ones((4, 64, 32, 3)), train=True)
    assert isinstance(out, ReIDOutput)
    assert out.features.shape == (4, 256) and out.logits.shape == (4, NUM_CLASSES)
    assert out.features.dtype == out.logits.dtype == jnp.float32


def test_eval_feature_choice(tiny_model_kwargs):
    x = jax.random.normal(jax.random.key(0), (3, 64, 32, 3))
    after = make(tiny_model_kwargs)(x, train=False)
    before = make(tiny_model_kwargs, test_feature="before")(x, train=False)
    # Fresh running statistics are mean 0, var 1, and the BNNeck scale is 1 with no bias.
    np.testing.assert_allclose(after, before / np.sqrt(1 + 1e-5), rtol=1e-6)
    no_neck = make(tiny_model_kwargs, bnneck=False)(x, train=False)
    np.testing.assert_allclose(no_neck, before, rtol=1e-6)


def test_bf16_head_stays_f32(tiny_model_kwargs):
    model = make(tiny_model_kwargs, dtype="bfloat16")
    out = model(jnp.ones((2, 64, 32, 3)), train=True)
    assert out.features.dtype == out.logits.dtype == jnp.float32
    assert model.backbone.conv1.kernel.dtype == jnp.float32


def test_bad_switch_values_are_rejected(tiny_model_kwargs):
    with pytest.raises(ValueError, match="test_feature"):
        make(tiny_model_kwargs, test_feature="middle")
    with pytest.raises(ValueError, match="num_classes"):
        ReIDNet(0, **tiny_model_kwargs, rngs=nnx.Rngs(0))


def test_jitted_forward_backward_learns_on_a_fixed_batch(tiny_model_kwargs):
    model = make(tiny_model_kwargs)
    optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
    x = jax.random.normal(jax.random.key(0), (8, 64, 32, 3))
    labels = jnp.array([0, 0, 1, 1, 2, 2, 3, 3])

    @nnx.jit
    def step(model, optimizer, x, labels):
        def loss_fn(model):
            out = model(x, train=True)
            return objective(out, labels, common.get_config().loss)[0]

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss, grads

    loss0, grads = step(model, optimizer, x, labels)
    for leaf in jax.tree.leaves(grads):
        assert np.all(np.isfinite(leaf))
    # alpha starts at 0 but receives gradient, so the attention branch can open.
    assert float(jnp.abs(grads["attention"]["alpha"][...])) > 0
    for _ in range(5):
        loss, _ = step(model, optimizer, x, labels)
    assert float(loss) < float(loss0)


@pytest.mark.parametrize("conv_init", ["he_fan_out", "torch_default"])
def test_conv_init_draws_as_torchvision_or_as_torchs_conv_default(tiny_model_kwargs, conv_init):
    """model.conv_init: every convolution's kernel (stem, bottlenecks, shortcuts, attention)
    has the spread of torchvision's kaiming_normal_(fan_out) or of nn.Conv2d's own default,
    kaiming_uniform_(a=sqrt(5)), which is U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    import torch

    model = make(tiny_model_kwargs, conv_init=conv_init)
    kernels = [(path, var[...]) for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))
               if path[-1] == "kernel" and var[...].ndim == 4]
    assert len(kernels) > 10
    for path, w in kernels:
        kh, kw, cin, cout = w.shape
        shape = (cout, cin, kh, kw)
        t = torch.empty(shape)
        if conv_init == "he_fan_out":
            torch.nn.init.kaiming_normal_(t, mode="fan_out", nonlinearity="relu")
        else:
            torch.nn.init.kaiming_uniform_(t, a=5 ** 0.5)
            assert np.abs(w).max() <= 1 / np.sqrt(cin * kh * kw) + 1e-7, path
        # Sample spreads of thousands of draws (or of the smallest kernels: within 35 %).
        expected = float(t.std())
        assert abs(float(np.std(w)) - expected) <= 0.35 * expected, (path, np.std(w), expected)
