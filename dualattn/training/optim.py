"""The optimizer and learning-rate schedule of a config: BoT's recipe in optax."""

from __future__ import annotations

import jax
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


GATE = "alpha"  # the self-attention gate's parameter name (dualattn.models.attention)


def is_gate(path) -> bool:
    """Whether a pytree path (of a model's parameters, in any container) names the gate."""
    return any(getattr(k, "key", getattr(k, "name", None)) == GATE for k in path)


def _gate_mask(params, gate: bool):
    return jax.tree_util.tree_map_with_path(lambda path, _: is_gate(path) == gate, params)


def create_optimizer(config: ml_collections.ConfigDict, schedule) -> optax.GradientTransformation:
    """torch ``Adam(lr, weight_decay=wd)``: L2 added to the gradient before Adam's moments.

    ``optim.alpha_weight_decay=False`` leaves the gate out of the L2 term, and
    ``optim.alpha_lr_factor`` scales the gate's Adam step, which is its learning rate (Adam's
    step does not depend on the gradient's scale): torch's Adam with the gate in a parameter
    group of its own, ``weight_decay`` 0 or ``lr * factor``."""
    o = config.optim
    mask = None if o.alpha_weight_decay else (lambda params: _gate_mask(params, False))
    parts = [optax.add_decayed_weights(o.weight_decay, mask=mask), optax.adam(schedule)]
    if o.alpha_lr_factor != 1.0:
        parts.append(optax.masked(optax.scale(o.alpha_lr_factor),
                                  lambda params: _gate_mask(params, True)))
    return optax.chain(*parts)


def _bot_schedule(o, steps_per_epoch: int):
    # No decay epochs: one that is never reached.
    milestones = jnp.asarray(sorted(o.decay_epochs) or [jnp.iinfo(jnp.int32).max], jnp.int32)

    def schedule(step):
        t = jnp.asarray(step, jnp.int32) // steps_per_epoch + 1  # BoT's last_epoch
        alpha = t / max(o.warmup_epochs, 1e-9)
        warm = jnp.where(t < o.warmup_epochs, o.warmup_factor * (1 - alpha) + alpha, 1.0)
        return o.lr * warm * o.decay_factor ** jnp.sum(milestones <= t)

    return schedule
