"""TPR at fixed FPRs over the protocol's pairs: the two-pass histogram path gives exactly what
the plain definition (every pair sorted) gives, with ties, junk and distractors."""

import numpy as np
import pytest

from dualattn.evaluation.verification import FPRS, rate_name, tpr_at_fpr, tpr_at_fpr_reference


def problem(seed, num_q=13, num_g=41, ids=5, levels=None):
    rng = np.random.default_rng(seed)
    q_pids, g_pids = rng.integers(0, ids, num_q), rng.integers(0, ids + 2, num_g)  # distractors
    q_cams, g_cams = rng.integers(0, 3, num_q), rng.integers(0, 3, num_g)
    dist = rng.random((num_q, num_g)).astype(np.float32)
    if levels:  # few distinct values: ties everywhere, across positives and negatives
        dist = np.floor(dist * levels).astype(np.float32) / levels
    return dist, q_pids, g_pids, q_cams, g_cams


@pytest.mark.parametrize("seed,levels", [(0, None), (1, None), (2, 4), (3, 7), (4, 2)])
def test_the_fast_path_is_the_definition(seed, levels):
    args = problem(seed, levels=levels)
    fprs = (*FPRS, 0.05, 0.2, 0.5, 0.9)
    expected = tpr_at_fpr_reference(*args, fprs=fprs)
    for chunk_size in (3, 256):
        assert tpr_at_fpr(*args, fprs=fprs, chunk_size=chunk_size) == expected


def test_junk_pairs_count_neither_way():
    """One query (pid 1, camera 0): its same-camera shot at distance 0 is junk, so the only
    positive is the other camera's at 0.5, behind the negatives at 0.1 and 0.3."""
    dist = np.array([[0.0, 0.5, 0.1, 0.3]], np.float32)
    args = dist, [1], [1, 1, 2, 3], [0], [0, 1, 0, 1]
    assert tpr_at_fpr(*args, fprs=(0.4, 0.5, 0.99)) == {0.4: 0.0, 0.5: 0.0, 0.99: 0.0}
    assert tpr_at_fpr(*args, fprs=(0.4,)) == tpr_at_fpr_reference(*args, fprs=(0.4,))
    far = np.array([[0.0, 0.05, 0.1, 0.3]], np.float32)  # the positive now comes first
    assert tpr_at_fpr(far, *args[1:], fprs=(0.0, 0.5)) == {0.0: 1.0, 0.5: 1.0}


def test_no_negative_or_no_positive_pair_is_nan():
    dist = np.zeros((1, 2), np.float32)
    assert all(np.isnan(v) for v in tpr_at_fpr(dist, [1], [1, 1], [0], [1, 1]).values())
    assert all(np.isnan(v) for v in tpr_at_fpr(dist, [1], [2, 3], [0], [1, 1]).values())


def test_negative_distances_order_like_floats():
    """Re-ranked or cosine distances may dip below zero by rounding."""
    args = problem(5)
    shifted = (args[0] - 0.5, *args[1:])
    assert tpr_at_fpr(*shifted, fprs=(0.1, 0.5)) == tpr_at_fpr_reference(*shifted,
                                                                          fprs=(0.1, 0.5))


def test_rate_names():
    assert [rate_name(f) for f in FPRS] == ["tpr@fpr1e-04", "tpr@fpr1e-03", "tpr@fpr1e-02"]
