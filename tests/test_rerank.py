"""Sparse, chunked re-ranking equals the published algorithm's direct transcription."""

import numpy as np
import pytest

from dualattn.evaluation.metrics import compute_distance_matrix, evaluate_rank
from dualattn.evaluation.rerank import re_ranking, re_ranking_features, re_ranking_reference

# Device-dependent: run on GPUs by benchmarks.gpu_check (pytest -m gpu).
pytestmark = pytest.mark.gpu


def clustered_features(q=40, g=150, d=16, ids=25, seed=0):
    """Features around one centre per identity, so neighbourhoods are non-trivial."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((ids, d))
    q_ids, g_ids = rng.integers(0, ids, q), rng.integers(0, ids, g)
    qf = centres[q_ids] + 0.6 * rng.standard_normal((q, d))
    gf = centres[g_ids] + 0.6 * rng.standard_normal((g, d))
    return qf.astype(np.float32), gf.astype(np.float32), q_ids, g_ids


def distances(qf, gf):
    return [np.asarray(compute_distance_matrix(a, b, "euclidean"))
            for a, b in ((qf, gf), (qf, qf), (gf, gf))]


@pytest.mark.parametrize("k1,k2,lambda_value", [(20, 6, 0.3), (10, 1, 0.5), (6, 3, 0.0),
                                                (7, 8, 1.0)])
def test_equals_the_published_algorithm(k1, k2, lambda_value):
    qf, gf, _, _ = clustered_features()
    q_g, q_q, g_g = distances(qf, gf)
    reference = re_ranking_reference(q_g, q_q, g_g, k1, k2, lambda_value)
    # Chunks that do not divide the sizes, so every boundary case is crossed.
    ours = re_ranking(q_g, q_q, g_g, k1, k2, lambda_value, chunk=23)
    assert ours.shape == (40, 150) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-6)
    # From features: the same up to the f32 rounding of the distances themselves.
    from_features = re_ranking_features(qf, gf, k1, k2, lambda_value, chunk=64)
    np.testing.assert_allclose(from_features, reference, rtol=0, atol=1e-5)


def test_ties_are_broken_by_index_like_a_stable_sort():
    """Duplicate gallery images give exactly tied distances at the k-th neighbour."""
    qf, gf, _, _ = clustered_features(q=12, g=40)
    gf = np.concatenate([gf, gf[:10], gf[:10]])  # every one of the first ten three times
    q_g, q_q, g_g = distances(qf, gf)
    np.testing.assert_allclose(re_ranking(q_g, q_q, g_g, 4, 2, 0.3, chunk=7),
                               re_ranking_reference(q_g, q_q, g_g, 4, 2, 0.3), atol=1e-6)


def test_re_ranking_helps_on_clustered_identities():
    qf, gf, q_ids, g_ids = clustered_features(q=60, g=300, ids=30, seed=1)
    cams_q, cams_g = np.zeros(60, int), np.ones(300, int)
    before = evaluate_rank(distances(qf, gf)[0], q_ids, g_ids, cams_q, cams_g).mAP
    after = evaluate_rank(re_ranking_features(qf, gf), q_ids, g_ids, cams_q, cams_g).mAP
    assert after > before


def test_bad_k2_is_refused():
    q_g, q_q, g_g = distances(*clustered_features(q=5, g=10)[:2])
    with pytest.raises(ValueError, match="k2"):
        re_ranking(q_g, q_q, g_g, k1=3, k2=5)
