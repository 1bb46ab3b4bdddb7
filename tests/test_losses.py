import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from dualattn.models import ReIDOutput
from dualattn.training.losses import TERMS, cross_entropy_label_smooth, objective, triplet_hard

# Device-dependent: run on GPUs by benchmarks.gpu_check (pytest -m gpu).
pytestmark = pytest.mark.gpu


def test_label_smoothed_ce_hand_computed():
    # softmax([ln 3, 0]) = [0.75, 0.25]; eps 0.1, K 2 -> targets [0.95, 0.05]
    loss = cross_entropy_label_smooth(jnp.array([[math.log(3.0), 0.0]]), jnp.array([0]), eps=0.1)
    expected = -(0.95 * math.log(0.75) + 0.05 * math.log(0.25))
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_label_smoothed_ce_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(16, 11)).astype(np.float32) * 3
    labels = rng.integers(0, 11, 16)
    for eps in (0.0, 0.1, 0.3):
        ours = cross_entropy_label_smooth(jnp.asarray(logits), jnp.asarray(labels), eps)
        ref = torch.nn.functional.cross_entropy(torch.from_numpy(logits),
                                                torch.from_numpy(labels), label_smoothing=eps)
        assert float(ours) == pytest.approx(float(ref), rel=1e-6)


def test_triplet_hand_computed():
    # 1-D features; hardest positive / negative per anchor worked out by hand:
    # a=0: ap 2, an 2.5 -> 0;  a=2: ap 2, an 0.5 -> 1.8;  a=2.5: ap 2.5, an 0.5 -> 2.3;
    # a=5: ap 2.5, an 3 -> 0.  mean = 4.1 / 4
    feats = jnp.array([[0.0], [2.0], [2.5], [5.0]])
    labels = jnp.array([0, 0, 1, 1])
    assert float(triplet_hard(feats, labels, margin=0.3)) == pytest.approx(1.025, rel=1e-5)


def brute_force_triplet(feats, labels, margin):
    """Loop over every anchor, positive and negative; no masks, no matrix tricks."""
    losses = []
    for a in range(len(feats)):
        pos = [np.linalg.norm(feats[a] - feats[p]) for p in range(len(feats))
               if labels[p] == labels[a]]
        neg = [np.linalg.norm(feats[a] - feats[n]) for n in range(len(feats))
               if labels[n] != labels[a]]
        if not neg:
            continue
        gap = max(pos) - min(neg)
        losses.append(math.log1p(math.exp(gap)) if margin is None else max(gap + margin, 0.0))
    return float(np.mean(losses)) if losses else 0.0


@pytest.mark.parametrize("margin", [0.3, 1.0, None])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_triplet_matches_brute_force_with_unequal_identities(margin, seed):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(5), rng.integers(1, 6, 5))  # 1..5 images per identity
    feats = rng.normal(size=(len(labels), 7)).astype(np.float32)
    ours = triplet_hard(jnp.asarray(feats), jnp.asarray(labels), margin=margin)
    assert float(ours) == pytest.approx(brute_force_triplet(feats, labels, margin), rel=1e-5,
                                        abs=1e-6)


def test_triplet_gradients_finite_with_duplicate_features():
    feats = jnp.array([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0], [3.0, 0.0], [3.0, 0.0], [1.0, 2.0]])
    labels = jnp.array([0, 0, 1, 1, 2, 2])  # identical features within and across identities
    value, grad = jax.value_and_grad(triplet_hard)(feats, labels)
    assert np.isfinite(float(value)) and np.all(np.isfinite(grad))
    assert float(value) > 0  # collapsed negatives are penalised


def test_triplet_single_identity_batch_is_zero_with_finite_gradient():
    feats = jax.random.normal(jax.random.key(0), (4, 3))
    value, grad = jax.value_and_grad(triplet_hard)(feats, jnp.zeros(4, jnp.int32))
    assert float(value) == 0.0 and np.all(np.isfinite(grad))


def test_the_objective_is_the_weighted_sum_of_its_named_terms():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(8, 4)), jnp.float32)
    feats = jnp.asarray(rng.normal(size=(8, 6)), jnp.float32)
    labels = jnp.array([0, 0, 1, 1, 2, 2, 3, 3])
    out = ReIDOutput(features=feats, logits=logits)
    loss = common.get_config().loss  # label smoothing 0.1, margin 0.3
    loss.weights.cross_entropy, loss.weights.triplet = 0.5, 2.0
    total, terms = objective(out, labels, loss)
    assert list(terms) == list(TERMS) == ["cross_entropy", "triplet"]
    ce = cross_entropy_label_smooth(logits, labels, 0.1)
    tri = triplet_hard(feats, labels, 0.3)
    assert float(terms["cross_entropy"]) == pytest.approx(float(ce))
    assert float(terms["triplet"]) == pytest.approx(float(tri))
    assert float(total) == pytest.approx(0.5 * float(ce) + 2.0 * float(tri), rel=1e-6)
    loss.weights.cross_entropy, loss.weights.triplet = 1.0, 0.0
    total, terms = objective(out, labels, loss)
    assert float(terms["triplet"]) == 0.0 and float(total) == pytest.approx(float(ce))
