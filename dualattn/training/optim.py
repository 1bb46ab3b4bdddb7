"""The optimizer and learning-rate schedule of a config: BoT's recipe in optax."""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections
import optax

SCHEDULES = ("bot", "per_step")


def learning_rate_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int):
    """Warmup from ``warmup_factor * lr`` over ``warmup_epochs``, then x``decay_factor`` at
    each of ``decay_epochs``; ``optim.schedule`` says how:

    - "bot": reid-strong-baseline's WarmupMultiStepLR stepped at the start of every epoch,
      constant within an epoch. Its scheduler has already stepped once when the first epoch
      starts, so (0-based) epoch E uses t = E + 1: factor ``wf * (1 - t/W) + t/W`` while
      t < W, and x``decay_factor`` for each decay epoch <= t (3.8e-5 in the first epoch at
      lr 3.5e-4, W 10, wf 0.01; the first decay in the 40th epoch).
    - "per_step": a linear ramp over the warmup's steps from ``wf * lr``, decays at the
      decay epochs' first steps.
    """
    o = config.optim
    if o.schedule not in SCHEDULES:
        raise ValueError(f"optim.schedule must be one of {SCHEDULES}, got {o.schedule!r}")
    if o.schedule == "bot":
        return _bot_schedule(o, steps_per_epoch)
    warmup_steps = int(o.warmup_epochs * steps_per_epoch)
    boundaries = {int(e * steps_per_epoch): o.decay_factor for e in o.decay_epochs}
    decayed = optax.piecewise_constant_schedule(o.lr, boundaries)
    warmup = optax.linear_schedule(o.lr * o.warmup_factor, o.lr, max(warmup_steps, 1))

    def schedule(step):
        # optax's piecewise schedule ignores its boundaries for unsigned counts, and NNX's
        # optimizer counts steps in uint32.
        step = jnp.asarray(step, jnp.int32)
        return jnp.where(step < warmup_steps, warmup(step), decayed(step))

    return schedule


def create_optimizer(config: ml_collections.ConfigDict, schedule) -> optax.GradientTransformation:
    """torch ``Adam(lr, weight_decay=wd)``: L2 added to the gradient before Adam's moments."""
    return optax.chain(optax.add_decayed_weights(config.optim.weight_decay),
                       optax.adam(schedule))


def _bot_schedule(o, steps_per_epoch: int):
    # No decay epochs: one that is never reached.
    milestones = jnp.asarray(sorted(o.decay_epochs) or [jnp.iinfo(jnp.int32).max], jnp.int32)

    def schedule(step):
        t = jnp.asarray(step, jnp.int32) // steps_per_epoch + 1  # BoT's last_epoch
        alpha = t / max(o.warmup_epochs, 1e-9)
        warm = jnp.where(t < o.warmup_epochs, o.warmup_factor * (1 - alpha) + alpha, 1.0)
        return o.lr * warm * o.decay_factor ** jnp.sum(milestones <= t)

    return schedule
