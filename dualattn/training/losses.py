"""ReID training losses: label-smoothed cross-entropy and batch-hard triplet.

All functions are pure and jittable, reduce to a scalar mean over the batch, and compute
in f32 (in f64 for f64 inputs: the numerics comparison's ground truth). They follow the
definitions used by BoT / torchreid / fast-reid, so numbers can be compared with those code
bases directly.
"""

from __future__ import annotations

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
    # At full precision: the expansion cancels, and TPUs multiply f32 at bf16 by default.
    dot = jnp.matmul(x, x.T, precision=jax.lax.Precision.HIGHEST)
    d2 = sq[:, None] + sq[None, :] - 2.0 * dot
    return jnp.sqrt(jnp.maximum(d2, MIN_SQUARED_DISTANCE))


def hardest_pairs(dist: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """For each anchor, the index of its farthest positive and of its closest negative (by
    argmax/argmin: the first one on a tie). An anchor with no negative gets index 0."""
    same = labels[:, None] == labels[None, :]
    pos_idx = jnp.argmax(jnp.where(same, dist, -jnp.inf), axis=1)
    neg_idx = jnp.argmin(jnp.where(same, jnp.inf, dist), axis=1)
    return pos_idx, neg_idx


def hard_example_mining(dist: jax.Array,
                        labels: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """For each anchor: the farthest positive, the closest negative, and whether it has one.

    Masks by label equality, so any number of images per identity works. The anchor itself
    counts as a positive (its distance is the clamped ~1e-6), as in BoT, so every anchor has a
    positive; anchors whose batch holds no other identity have no negative and are reported
    invalid. Picks by argmax/argmin (``hardest_pairs``), so the gradient flows to one pair as
    in PyTorch's ``max(dim)``.
    """
    pos_idx, neg_idx = hardest_pairs(dist, labels)
    dist_ap = jnp.take_along_axis(dist, pos_idx[:, None], axis=1)[:, 0]
    dist_an = jnp.take_along_axis(dist, neg_idx[:, None], axis=1)[:, 0]
    has_negative = jnp.any(labels[:, None] != labels[None, :], axis=1)
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


# The objective's terms by name: each is a function of (the model's train-mode output, the
# labels, the config's loss section), weighted by ``loss.weights.<name>``. A new term is an
# entry here and a weight in configs/common.py: the trainer, its logs, the report and the
# numerics comparison iterate over these names.
TERMS = {
    # label-smoothed CE on the logits of the BNNeck'd feature
    "cross_entropy": lambda out, labels, c: cross_entropy_label_smooth(out.logits, labels,
                                                                       c.label_smoothing),
    # batch-hard triplet on the pooled feature before the BNNeck
    "triplet": lambda out, labels, c: triplet_hard(out.features, labels, c.margin),
}


def objective(out, labels: jax.Array, loss_config) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``(total, terms)``: every term of ``TERMS`` on ``out`` (a ``ReIDOutput``) and their sum
    weighted by ``loss_config.weights``. A term whose weight is zero is not computed (it is
    reported as 0). The one objective the trainer, the numerics comparison and the benchmarks
    optimise."""
    zero = jnp.zeros((), jnp.promote_types(out.logits.dtype, jnp.float32))
    weights = loss_config.weights
    terms = {name: term(out, labels, loss_config) if weights[name] else zero
             for name, term in TERMS.items()}
    total = sum(weights[name] * value for name, value in terms.items())
    return total, terms
