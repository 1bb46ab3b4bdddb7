"""The optimizer and learning-rate schedule of a config: BoT's recipe in optax."""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections
import optax


def learning_rate_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int):
    """Linear warmup from ``warmup_factor * lr`` over ``warmup_epochs``, then x``decay_factor``
    at each of ``decay_epochs`` (BoT's schedule, counted in steps)."""
    o = config.optim
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
