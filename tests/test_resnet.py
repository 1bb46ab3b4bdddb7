import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dualattn.models import ResNet, count_params
from tests.helpers import se_params

# Device-dependent: run on GPUs by benchmarks.gpu_check (pytest -m gpu).
pytestmark = pytest.mark.gpu

TORCHVISION_RESNET50_WITHOUT_FC = 23_508_032  # 25,557,032 minus fc (2048*1000 + 1000)


def test_plain_resnet50_has_torchvision_parameter_count():
    model = nnx.eval_shape(lambda: ResNet(use_se=False, rngs=nnx.Rngs(0)))
    assert count_params(model) == TORCHVISION_RESNET50_WITHOUT_FC
    assert model.out_channels == 2048


def test_se_adds_exactly_its_fc_layers():
    model = nnx.eval_shape(lambda: ResNet(use_se=True, rngs=nnx.Rngs(0)))
    added = count_params(model) - TORCHVISION_RESNET50_WITHOUT_FC
    assert added == se_params((3, 4, 6, 3), 64) == 2_530_992


@pytest.mark.parametrize("last_stride,factor", [(1, 16), (2, 32)])
def test_output_resolution_follows_last_stride(last_stride, factor):
    model = ResNet(stage_sizes=(1, 1, 1, 1), width=8, last_stride=last_stride, rngs=nnx.Rngs(0))
    y = model(jnp.zeros((2, 64, 32, 3)), train=False)
    assert y.shape == (2, 64 // factor, 32 // factor, 256)


def test_odd_input_sizes_follow_torch_output_formula():
    # torch: out = floor((in + 2*pad - k) / stride) + 1 at every strided layer.
    def torch_out(n):
        n = (n + 6 - 7) // 2 + 1  # 7x7/2 pad 3
        n = (n + 2 - 3) // 2 + 1  # max-pool 3x3/2 pad 1
        for _ in range(2):  # layer2, layer3: 3x3/2 pad 1
            n = (n + 2 - 3) // 2 + 1
        return n

    model = ResNet(stage_sizes=(1, 1, 1, 1), width=8, rngs=nnx.Rngs(0))
    y = model(jnp.zeros((1, 61, 35, 3)), train=False)
    assert y.shape[1:3] == (torch_out(61), torch_out(35))


def test_bf16_compute_keeps_f32_parameters_and_statistics():
    model = ResNet(stage_sizes=(1, 1, 1, 1), width=8, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    y = model(jnp.ones((2, 32, 16, 3)), train=True)
    assert y.dtype == jnp.bfloat16
    for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)):
        assert leaf.dtype == jnp.float32
    stats = jax.tree.leaves(nnx.state(model, nnx.BatchStat))
    assert stats and all(leaf.dtype == jnp.float32 for leaf in stats)


def test_train_mode_updates_running_statistics_and_eval_mode_does_not():
    model = ResNet(stage_sizes=(1, 1, 1, 1), width=8, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (4, 32, 16, 3))
    before = np.asarray(model.bn1.mean[...])
    model(x, train=False)
    np.testing.assert_array_equal(model.bn1.mean[...], before)
    model(x, train=True)
    assert not np.allclose(model.bn1.mean[...], before)


@pytest.mark.parametrize("bad", [dict(stage_sizes=(1, 1, 1)), dict(last_stride=3)])
def test_invalid_architecture_is_rejected(bad):
    with pytest.raises(ValueError):
        ResNet(**{"stage_sizes": (1, 1, 1, 1), "width": 8, **bad}, rngs=nnx.Rngs(0))
