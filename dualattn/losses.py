"""ReID training losses: label-smoothed cross-entropy and batch-hard triplet.

All functions are pure and jittable, reduce to a scalar mean over the batch, and compute in
f32 (in f64 for f64 inputs: the numerics comparison's ground truth). They follow the definitions used by BoT / torchreid / fast-reid, so numbers can be
compared with those code bases directly.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

def _at_least_f32(x: jax.Array) -> jax.Array:
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


# Squared distances below this are clamped before the square root: sqrt has an infinite
# derivative at 0 (the diagonal, or two identical features in a batch).
MIN_SQUARED_DISTANCE = 1e-12


def cross_entropy_label_smooth(logits: jax.Array, labels: jax.Array, eps: float = 0.1) -> jax.Array:
    """Cross-entropy against targets ``(1 - eps) * onehot + eps / K``, mean over the batch.

    This is Szegedy et al.'s label smoothing as written in torchreid and BoT (the uniform part
    includes the true class). ``eps=0`` is the plain cross-entropy.
    """
    logits = _at_least_f32(logits)
    num_classes = logits.shape[-1]
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    targets = jax.nn.one_hot(labels, num_classes, dtype=logits.dtype)
    targets = (1.0 - eps) * targets + eps / num_classes
    return jnp.mean(-jnp.sum(targets * log_probs, axis=-1))


def pairwise_euclidean(x: jax.Array) -> jax.Array:
    """True Euclidean distances between the rows of x, ``sqrt(max(d2, 1e-12))``, in >= f32.

    Uses the ``|a|^2 + |b|^2 - 2ab`` expansion (one matmul) like BoT; the clamp keeps both the
    value and the gradient finite when two rows coincide.
    """
    x = _at_least_f32(x)
    sq = jnp.sum(x * x, axis=1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
    return jnp.sqrt(jnp.maximum(d2, MIN_SQUARED_DISTANCE))


def hard_example_mining(dist: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """For each anchor: the farthest positive, the closest negative, and whether it has one.

    Masks by label equality, so any number of images per identity works. The anchor itself
    counts as a positive (its distance is the clamped ~1e-6), as in BoT, so every anchor has a
    positive; anchors whose batch holds no other identity have no negative and are reported
    invalid. Picks by argmax/argmin, so the gradient flows to one pair as in PyTorch's
    ``max(dim)``.
    """
    same = labels[:, None] == labels[None, :]
    pos_idx = jnp.argmax(jnp.where(same, dist, -jnp.inf), axis=1)
    neg_idx = jnp.argmin(jnp.where(same, jnp.inf, dist), axis=1)
    dist_ap = jnp.take_along_axis(dist, pos_idx[:, None], axis=1)[:, 0]
    dist_an = jnp.take_along_axis(dist, neg_idx[:, None], axis=1)[:, 0]
    has_negative = jnp.any(~same, axis=1)
    return dist_ap, dist_an, has_negative


def triplet_hard(features: jax.Array, labels: jax.Array, margin: float | None = 0.3) -> jax.Array:
    """Batch-hard triplet loss (Hermans et al. 2017) on true Euclidean distances.

    ``mean(relu(d(a, p_hardest) - d(a, n_hardest) + margin))`` over the anchors that have a
    negative in the batch; with ``margin=None`` the soft margin ``softplus(d_ap - d_an)``.
    Returns 0 when no anchor has a negative (a batch of one identity).
    """
    dist = pairwise_euclidean(features)
    dist_ap, dist_an, valid = hard_example_mining(dist, labels)
    if margin is None:
        per_anchor = jax.nn.softplus(dist_ap - dist_an)
    else:
        per_anchor = jax.nn.relu(dist_ap - dist_an + margin)
    per_anchor = jnp.where(valid, per_anchor, 0.0)
    return jnp.sum(per_anchor) / jnp.maximum(jnp.sum(valid), 1)


class LossParts(NamedTuple):
    total: jax.Array
    cross_entropy: jax.Array
    triplet: jax.Array


def reid_loss(logits: jax.Array, features: jax.Array, labels: jax.Array, *,
              label_smoothing: float = 0.1, margin: float | None = 0.3,
              ce_weight: float = 1.0, triplet_weight: float = 1.0) -> LossParts:
    """The training objective: ``ce_weight * CE_ls(logits) + triplet_weight * triplet(features)``.

    ``logits`` come from the BNNeck'd feature and ``features`` are the feature before it, as
    the model's train-mode output provides them. A zero weight skips that term entirely.
    """
    zero = jnp.zeros((), jnp.promote_types(logits.dtype, jnp.float32))
    ce = cross_entropy_label_smooth(logits, labels, label_smoothing) if ce_weight else zero
    tri = triplet_hard(features, labels, margin) if triplet_weight else zero
    return LossParts(total=ce_weight * ce + triplet_weight * tri, cross_entropy=ce, triplet=tri)


def objective(logits: jax.Array, features: jax.Array, labels: jax.Array,
              loss_config) -> LossParts:
    """``reid_loss`` with the weights, smoothing and margin of a config's ``loss`` section: the
    one objective the trainer, the numerics comparison and the benchmarks optimise."""
    return reid_loss(logits, features, labels, label_smoothing=loss_config.label_smoothing,
                     margin=loss_config.margin, ce_weight=loss_config.ce_weight,
                     triplet_weight=loss_config.triplet_weight)
