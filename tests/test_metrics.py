import numpy as np
import pytest

from dualattn.evaluation.metrics import (
    compute_distance_matrix,
    evaluate_rank,
    evaluate_rank_reference,
)

# Device-dependent: run on GPUs by benchmarks.gpu_check (pytest -m gpu).
pytestmark = pytest.mark.gpu


def test_hand_computed_protocol():
    # Gallery: 0 junk for query 0 (same pid, same camera), 3 a pid-0 distractor.
    g_pids = np.array([1, 2, 1, 0, 1, 3])
    g_cams = np.array([0, 1, 1, 1, 2, 0])
    distmat = np.array([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6],   # pid 1 cam 0: kept ranks 1 and 3 hit
                        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],   # pid 3 cam 1: only hit at rank 5
                        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]])  # pid 4: no match, skipped
    q_pids, q_cams = np.array([1, 3, 4]), np.array([0, 1, 0])
    for fn in (evaluate_rank, evaluate_rank_reference):
        r = fn(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=8)
        np.testing.assert_allclose(r.cmc, [0, 0.5, 0.5, 0.5, 0.5, 1, 1, 1])
        # AP: (1/2 + 2/4) / 2 = 0.5 and 1/6;  INP: 2/4 and 1/6
        assert r.mAP == pytest.approx((0.5 + 1 / 6) / 2)
        assert r.mINP == pytest.approx((0.5 + 1 / 6) / 2)
        assert r.valid_queries == 2 and r.queries == 3
        # Per query: AP, INP and the first match's rank among the kept items; invalid last.
        np.testing.assert_allclose(r.ap, [0.5, 1 / 6, 0])
        np.testing.assert_allclose(r.inp, [0.5, 1 / 6, 0])
        assert r.first_rank.tolist() == [1, 5, 6] and r.valid.tolist() == [True, True, False]
        assert r.distances is distmat or np.array_equal(r.distances, distmat)
        assert r.rates() == pytest.approx({"rank1": 0, "rank5": 0.5, "rank10": 1, "mAP": r.mAP,
                                           "mINP": r.mINP, "valid_queries": 2, "queries": 3})


def test_ties_are_broken_by_gallery_index():
    g_pids, g_cams = np.array([7, 1, 1]), np.array([0, 0, 1])
    # query pid 1 cam 0: gallery 1 is junk, gallery 2 the only hit; all three tied.
    tied = np.zeros((1, 3))
    r = evaluate_rank(tied, [1], g_pids, [0], g_cams)
    assert r.cmc[0] == 0 and r.cmc[1] == 1  # non-match (index 0) ranks first
    # With the junk item before the hit and the non-match after, the hit is first.
    r = evaluate_rank(tied, [1], np.array([1, 1, 7]), [0], np.array([0, 1, 0]))
    assert r.cmc[0] == 1 and r.mAP == 1.0


def random_problem(rng, num_q, num_g, num_ids, num_cams, tie_levels=None):
    g_pids = rng.integers(0, num_ids, num_g)  # pid 0 = distractors
    q_pids = rng.integers(1, num_ids + 5, num_q)  # some pids absent from the gallery
    q_cams, g_cams = rng.integers(0, num_cams, num_q), rng.integers(0, num_cams, num_g)
    if tie_levels:
        distmat = rng.integers(0, tie_levels, (num_q, num_g)).astype(np.float32)
    else:
        distmat = rng.random((num_q, num_g), dtype=np.float32)
    return distmat, q_pids, g_pids, q_cams, g_cams


@pytest.mark.parametrize("seed,tie_levels", [(0, None), (1, 3), (2, 50), (3, 1000)])
@pytest.mark.parametrize("chunk_size,threads", [(7, 1), (64, 2), (1000, 1)])
def test_matches_per_query_reference(seed, tie_levels, chunk_size, threads):
    rng = np.random.default_rng(seed)
    problem = random_problem(rng, 120, 900, 40, 4, tie_levels)
    fast = evaluate_rank(*problem, max_rank=20, chunk_size=chunk_size, num_threads=threads)
    ref = evaluate_rank_reference(*problem, max_rank=20)
    assert fast.valid_queries == ref.valid_queries < 120  # some skipped
    assert fast.queries == ref.queries == 120
    np.testing.assert_allclose(fast.cmc, ref.cmc, rtol=0, atol=1e-12)
    assert fast.mAP == pytest.approx(ref.mAP, rel=1e-12)
    assert fast.mINP == pytest.approx(ref.mINP, rel=1e-12)
    np.testing.assert_allclose(fast.ap, ref.ap, rtol=1e-12, atol=0)
    np.testing.assert_array_equal(fast.first_rank[fast.valid], ref.first_rank[ref.valid])


def test_max_rank_beyond_gallery_saturates():
    rng = np.random.default_rng(5)
    r = evaluate_rank(*random_problem(rng, 30, 12, 4, 3), max_rank=50)
    assert r.cmc.shape == (50,) and r.cmc[-1] == 1.0


def test_perfect_ranking_scores_one():
    pids = np.arange(1, 21)
    distmat = 1.0 - np.eye(20)
    r = evaluate_rank(distmat, pids, pids, np.zeros(20), np.ones(20))
    assert r.cmc[0] == 1.0 and r.mAP == 1.0 and r.mINP == 1.0


def test_user_errors_are_explained():
    rng = np.random.default_rng(0)
    d, qp, gp, qc, gc = random_problem(rng, 5, 30, 4, 2)
    with pytest.raises(ValueError, match="g_pids has 29"):
        evaluate_rank(d, qp, gp[:-1], qc, gc)
    with pytest.raises(ValueError, match="2-D"):
        evaluate_rank(d[0], qp, gp, qc, gc)
    with pytest.raises(ValueError, match="no query has a true match"):
        evaluate_rank(d, np.full(5, 999), gp, qc, gc)
    d[2, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        evaluate_rank(d, qp, gp, qc, gc)


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
def test_distance_matrix_matches_numpy(metric):
    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(9, 16)), rng.normal(size=(13, 16))
    diff = q[:, None, :] - g[None, :, :]
    expected = {
        "euclidean": np.sqrt((diff**2).sum(-1)),
        "sqeuclidean": (diff**2).sum(-1),
        "cosine": 1 - (q / np.linalg.norm(q, axis=1, keepdims=True))
        @ (g / np.linalg.norm(g, axis=1, keepdims=True)).T,
    }[metric]
    got = compute_distance_matrix(q, g, metric, chunk_size=4)
    assert got.shape == (9, 13) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_distance_metric_is_validated():
    with pytest.raises(ValueError, match="metric"):
        compute_distance_matrix(np.ones((2, 3)), np.ones((2, 3)), "manhattan")
