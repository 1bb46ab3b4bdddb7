"""The jitted train step: augment the global batch on the device, one optimizer step on the
objective's terms, and the scalars the trainer logs.

The step runs over the data-parallel mesh with the batch sharded on its ``data`` axis and the
state replicated, so BatchNorm statistics and batch-hard triplet mining see the *global*
batch whatever the device count.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from dualattn.training.augment import AugmentConfig, augment
from dualattn.training.losses import objective


def augment_config(config: ml_collections.ConfigDict) -> AugmentConfig:
    a = config.augment
    return AugmentConfig(flip=a.flip, translate=a.translate, rotate_degrees=a.rotate_degrees,
                         erase_prob=a.erase_prob)


def step_on_batch(graphdef, state, x, labels, *, config, schedule):
    """One optimizer step on an augmented, normalised batch ``x``: ``(new state, scalars,
    the train-mode output)``. The scalars are the loss, each of its terms, the training
    accuracy, the learning rate and, with self-attention, its gate ``alpha`` after the update
    (the weight of the module's output in ``alpha * o + x``, which starts at 0: logged so that
    whether the module is used at all is in view) with ``alpha_grad``, the objective's
    gradient on it (before weight decay). The trainer and the side-by-side twin trainer
    (``dualattn.interop.twin_training``) both step through it."""
    parts = nnx.merge(graphdef, state)
    model, optimizer = parts["model"], parts["optimizer"]

    def loss_fn(model):
        out = model(x, train=True)
        total, terms = objective(out, labels, config.loss)
        return total, (terms, out)

    (total, (terms, out)), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    step = optimizer.step[...]
    optimizer.update(model, grads)
    metrics = {"loss": total, **terms,
               "accuracy": jnp.mean(jnp.argmax(out.logits, -1) == labels), "lr": schedule(step)}
    if model.attention is not None:
        metrics["alpha"] = model.attention.alpha[...]
        metrics["alpha_grad"] = grads["attention"]["alpha"][...]
    return nnx.state(parts), metrics, out


def train_step(graphdef, state, images, labels, rng, *, config, aug_cfg, schedule):
    """One optimizer step on a global uint8 batch, augmented here on the device; returns the
    new state (its named parts) and ``step_on_batch``'s scalars."""
    x = augment(rng, images, aug_cfg)
    state, metrics, _ = step_on_batch(graphdef, state, x, labels, config=config,
                                      schedule=schedule)
    return state, metrics


def make_train_step(config, schedule, aug_cfg: AugmentConfig | None = None):
    """``train_step`` jitted with the config (augmentation ``aug_cfg`` or the config's), the
    graphdef static and the state donated: ``step_fn(graphdef, state, images, labels, rng)``."""
    aug_cfg = augment_config(config) if aug_cfg is None else aug_cfg
    return jax.jit(functools.partial(train_step, config=config, aug_cfg=aug_cfg,
                                     schedule=schedule), static_argnums=0, donate_argnums=1)
