"""Average query expansion: the chunked device path is the definition (fast-reid's alpha-QE),
for any chunking, several rounds, duplicated features and negative similarities."""

import numpy as np
import pytest

from dualattn.evaluation.query_expansion import (
    average_query_expansion,
    average_query_expansion_reference,
)


def features(seed, num_q=7, num_g=23, dim=8):
    rng = np.random.default_rng(seed)
    q, g = rng.standard_normal((num_q, dim)), rng.standard_normal((num_g, dim))
    g[5] = g[3]  # a duplicate: a tie wherever it ranks, with identical features either way
    return q.astype(np.float32), g.astype(np.float32)


@pytest.mark.parametrize("k,alpha,times,chunk", [(5, 3.0, 1, 4096), (5, 3.0, 1, 4),
                                                 (1, 3.0, 1, 7), (3, 1.0, 2, 5),
                                                 (10, 3.0, 3, 3)])
def test_the_device_path_is_the_definition(k, alpha, times, chunk):
    q, g = features(k + times)
    ours = average_query_expansion(q, g, k=k, alpha=alpha, times=times, chunk_size=chunk)
    expected = average_query_expansion_reference(q, g, k=k, alpha=alpha, times=times)
    for a, b in zip(ours, expected, strict=True):
        assert a.shape == b.shape and a.dtype == np.float32
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_one_neighbour_is_the_feature_itself():
    """k=1: the nearest feature is the feature (similarity 1, weight 1)."""
    q, g = features(0)
    ours = average_query_expansion(q, g, k=1)
    np.testing.assert_allclose(ours[0], q, rtol=1e-6)
    np.testing.assert_allclose(ours[1], g, rtol=1e-6)


def test_k_beyond_the_features_is_refused():
    q, g = features(0, num_q=2, num_g=6)
    with pytest.raises(ValueError, match="k must be in 1..8"):
        average_query_expansion(q, g, k=9)
