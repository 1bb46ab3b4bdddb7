"""Search at gallery scale: the streamed top-k is the stable sort of the full distance row, for
every block size, metric and tie; faiss, where installed, finds the same neighbours."""

import numpy as np
import pytest

from dualattn.evaluation.metrics import compute_distance_matrix
from dualattn.serving.search import SearchError, top_k


def problem(seed=0, num_q=5, num_g=97, dim=6, levels=None):
    rng = np.random.default_rng(seed)
    q, g = rng.standard_normal((num_q, dim)), rng.standard_normal((num_g, dim))
    if levels:  # coarse values: many exact ties in distance
        q, g = np.round(q * levels), np.round(g * levels)
    return q.astype(np.float32), g.astype(np.float32)


def expected(q, g, k, metric):
    dist = compute_distance_matrix(q, g, metric)
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(dist, order, axis=1)


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
@pytest.mark.parametrize("block_rows", [None, 7, 10, 97])
@pytest.mark.parametrize("levels", [None, 1])
def test_streamed_top_k_is_the_stable_sort_of_the_full_row(metric, block_rows, levels):
    q, g = problem(levels=levels)
    idx, dist = top_k(q, g, 10, metric=metric, block_rows=block_rows)
    want_idx, want_dist = expected(q, g, 10, metric)
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_allclose(dist, want_dist, rtol=1e-6, atol=1e-6)


def test_k_beyond_the_gallery_returns_the_whole_gallery_sorted():
    q, g = problem(num_g=4)
    idx, _ = top_k(q, g, 10, block_rows=3)
    assert idx.shape == (5, 4)
    np.testing.assert_array_equal(idx, expected(q, g, 4, "euclidean")[0])


def test_a_memory_mapped_gallery_streams_from_disk(tmp_path):
    q, g = problem()
    np.save(tmp_path / "g.npy", g)
    mapped = np.load(tmp_path / "g.npy", mmap_mode="r")
    np.testing.assert_array_equal(top_k(q, mapped, 5, block_rows=16)[0],
                                  expected(q, g, 5, "euclidean")[0])


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_faiss_finds_the_same_neighbours(metric):
    pytest.importorskip("faiss")
    q, g = problem(seed=3)
    idx, dist = top_k(q, g, 10, metric=metric, backend="faiss")
    want_idx, want_dist = expected(q, g, 10, metric)
    np.testing.assert_array_equal(idx, want_idx)  # no ties in continuous random features
    np.testing.assert_allclose(dist, want_dist, rtol=1e-4, atol=1e-4)


def test_without_faiss_the_error_names_the_extra(monkeypatch):
    import builtins
    real = builtins.__import__

    def no_faiss(name, *args, **kwargs):
        if name == "faiss":
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_faiss)
    q, g = problem()
    with pytest.raises(SearchError, match=r'pip install -e "\.\[search\]"'):
        top_k(q, g, 3, backend="faiss")
