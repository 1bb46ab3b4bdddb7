"""The learning-rate schedules (BoT's per-epoch warmup and decays, and the per-step variant) and
the optimizer's switches for the attention gate."""

import functools

import numpy as np
import optax
import pytest

from configs import tiny
from dualattn.training.optim import create_optimizer, learning_rate_schedule


@pytest.mark.parametrize("dtype", [np.int32, np.uint32])
def test_learning_rate_schedule_warms_up_and_steps_down(dtype):
    c = tiny.get_config()
    c.optim.lr, c.optim.warmup_epochs, c.optim.warmup_factor = 1e-3, 2, 0.01
    c.optim.decay_epochs, c.optim.decay_factor = (4, 6), 0.1
    c.optim.schedule = "per_step"
    schedule = learning_rate_schedule(c, steps_per_epoch=10)
    lr = lambda step: float(schedule(dtype(step)))  # noqa: E731
    # optax's linear schedule evaluates (init - end) * frac + end in f32: recovering 1e-5 from
    # 1e-3 costs ~6e-11 absolute, i.e. ~8e-6 relative.
    approx = functools.partial(pytest.approx, rel=2e-5)
    assert lr(0) == approx(1e-5)
    assert lr(10) == approx(1e-5 + (1e-3 - 1e-5) / 2)
    assert lr(20) == approx(1e-3) and lr(39) == approx(1e-3)
    assert lr(40) == approx(1e-4) and lr(60) == approx(1e-5)


def test_bot_schedule_is_reid_strong_baselines_per_epoch_rate():
    """WarmupMultiStepLR stepped at each epoch's start: epoch E (0-based) runs at t = E + 1."""
    c = tiny.get_config()
    c.optim.lr, c.optim.warmup_epochs, c.optim.warmup_factor = 3.5e-4, 10, 0.01
    c.optim.decay_epochs, c.optim.decay_factor, c.optim.schedule = (40, 70), 0.1, "bot"
    schedule = learning_rate_schedule(c, steps_per_epoch=7)
    approx = functools.partial(pytest.approx, rel=1e-5)
    for epoch, expected in [(0, 3.5e-4 * (0.01 * 0.9 + 0.1)), (8, 3.5e-4 * (0.01 * 0.1 + 0.9)),
                            (9, 3.5e-4), (38, 3.5e-4), (39, 3.5e-5), (68, 3.5e-5),
                            (69, 3.5e-6)]:
        for step in (7 * epoch, 7 * epoch + 6):  # constant within the epoch
            assert float(schedule(np.uint32(step))) == approx(expected), (epoch, step)
    assert float(schedule(0)) == approx(3.815e-5)


@pytest.mark.parametrize("decay, factor", [(True, 1.0), (False, 1.0), (True, 10.0), (False, 3.0)])
def test_gate_switches_are_torch_adam_with_the_gate_in_its_own_group(decay, factor):
    """optim.alpha_weight_decay / alpha_lr_factor against torch's Adam with two parameter
    groups: the gate (weight_decay 0 when off, lr x factor) and everything else."""
    import torch

    c = tiny.get_config()
    c.optim.weight_decay, c.optim.alpha_weight_decay, c.optim.alpha_lr_factor = 0.1, decay, factor
    rng = np.random.default_rng(0)
    params = {"attention": {"alpha": np.float32(0.5)},
              "classifier": {"kernel": rng.standard_normal((3, 4)).astype(np.float32)}}
    tx = create_optimizer(c, 1e-2)
    state = tx.init(params)
    alpha = torch.nn.Parameter(torch.tensor(0.5))
    kernel = torch.nn.Parameter(torch.from_numpy(params["classifier"]["kernel"].copy()))
    opt = torch.optim.Adam([{"params": [kernel]},
                            {"params": [alpha], "lr": 1e-2 * factor,
                             "weight_decay": 0.1 if decay else 0.0}], lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        g_alpha, g_kernel = rng.standard_normal(), rng.standard_normal((3, 4))
        grads = {"attention": {"alpha": np.float32(g_alpha)},
                 "classifier": {"kernel": g_kernel.astype(np.float32)}}
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        alpha.grad = torch.tensor(g_alpha, dtype=torch.float32)
        kernel.grad = torch.from_numpy(g_kernel.astype(np.float32))
        opt.step()
    np.testing.assert_allclose(params["attention"]["alpha"], alpha.item(), rtol=1e-5)
    np.testing.assert_allclose(params["classifier"]["kernel"], kernel.detach().numpy(),
                               rtol=1e-5)
