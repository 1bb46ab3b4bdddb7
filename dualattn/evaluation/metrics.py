"""ReID retrieval metrics: CMC (Rank-k), mAP and mINP under the Market-1501 / Duke protocol.

The protocol (torchreid, fast-reid and BoT agree): for each query, rank the gallery by
distance; drop gallery items with the query's person id *and* camera (same-camera shots of the
same person are "junk"); skip queries with no remaining true match; keep distractors (pid 0 or
any pid not queried). Then

- CMC[k]: fraction of queries whose first true match is within the top k+1 kept items;
- AP: mean over the true matches of the precision at each match's position;
- mINP: (number of matches) / (position of the last match + 1), Ye et al.'s inverse penalty.

Ties in distance are broken by gallery index (a stable ranking), so results are deterministic.

``evaluate_rank`` (torchreid's and fast-reid's name) is the fast path: chunks of queries are
sorted with NumPy's SIMD quicksort on a thread pool, and ranks are read off the sparse
positions of matches and junk instead of dense cumulative sums. ``evaluate_rank_reference`` is
the same protocol written as the plain per-query loop the PyTorch toolkits use, on
``kept_ranking``; it is the definition the fast path is tested against. Both return a
``Scores``. ``compute_distance_matrix`` gives the distances, on the device.
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np

from dualattn.evaluation.scores import Scores

DISTANCE_METRICS = ("euclidean", "sqeuclidean", "cosine")


def _check_inputs(distmat, q_pids, g_pids, q_camids, g_camids):
    distmat = np.asarray(distmat)
    if distmat.ndim != 2:
        raise ValueError(f"distmat must be 2-D (num_query, num_gallery), got shape {distmat.shape}")
    num_q, num_g = distmat.shape
    arrays = []
    for name, arr, n in (("q_pids", q_pids, num_q), ("g_pids", g_pids, num_g),
                         ("q_camids", q_camids, num_q), ("g_camids", g_camids, num_g)):
        arr = np.asarray(arr).reshape(-1)
        if arr.shape[0] != n:
            raise ValueError(f"{name} has {arr.shape[0]} entries but distmat implies {n}")
        arrays.append(arr)
    return (distmat, *arrays)


def _rank_rows(dist: np.ndarray, g_pids: np.ndarray, q_pids: np.ndarray):
    """Argsort each row ascending as if ties were broken by gallery index; also the pid matches.

    NumPy's default sort is a vectorised quicksort, about 5x faster than its stable sort but
    with an arbitrary order among equal distances. Equal f32 distances are common at gallery
    scale (most Market rows have some), yet their order only matters to the metrics when a
    tied run holds an item of the query's pid: permuting non-matches among themselves moves no
    match. Only such rows are re-sorted stably.
    """
    order = np.argsort(dist, axis=1)
    match = g_pids[order] == q_pids[:, None]
    ranked = np.take_along_axis(dist, order, axis=1)
    tied = (ranked[:, 1:] == ranked[:, :-1]) & (match[:, 1:] | match[:, :-1])
    rows = np.flatnonzero(tied.any(axis=1))
    if rows.size:
        order[rows] = np.argsort(dist[rows], axis=1, kind="stable")
        match[rows] = g_pids[order[rows]] == q_pids[rows, None]
    return order, match


def _evaluate_chunk(dist, q_pids, q_camids, g_pids, g_camids, max_rank):
    """Per-query (first-match rank, AP, INP, valid) for one chunk of queries."""
    if np.isnan(dist).any():
        raise ValueError("distmat contains NaN; check the features that produced it")
    n, num_g = dist.shape
    order, match = _rank_rows(dist, g_pids, q_pids)
    junk = match & (g_camids[order] == q_camids[:, None])
    hits = match & ~junk

    hit_rows, hit_cols = np.nonzero(hits)  # row-major: each row's hits in rank order
    junk_rows, junk_cols = np.nonzero(junk)
    # Position of a hit among the kept items = its column minus the junk before it in its row.
    junk_keys = junk_rows.astype(np.int64) * num_g + junk_cols
    hit_keys = hit_rows.astype(np.int64) * num_g + hit_cols
    junk_row_start = np.searchsorted(junk_keys, np.arange(n, dtype=np.int64) * num_g)
    kept_rank = hit_cols - (np.searchsorted(junk_keys, hit_keys) - junk_row_start[hit_rows])

    num_rel = np.bincount(hit_rows, minlength=n)
    row_start = np.concatenate([[0], np.cumsum(num_rel)[:-1]])
    nth_hit = np.arange(hit_rows.size) - row_start[hit_rows] + 1  # 1, 2, ... within each row
    precision = nth_hit / (kept_rank + 1.0)
    valid = num_rel > 0
    ap = np.bincount(hit_rows, weights=precision, minlength=n).astype(np.float64)
    ap[valid] /= num_rel[valid]
    first_rank = np.full(n, num_g, dtype=np.int64)
    last_rank = np.zeros(n, dtype=np.int64)
    first_rank[valid] = kept_rank[row_start[valid]]
    last_rank[valid] = kept_rank[row_start[valid] + num_rel[valid] - 1]
    inp = np.where(valid, num_rel / (last_rank + 1.0), 0.0)
    return first_rank, ap, inp, valid


def _scores(distmat, first_rank, ap, inp, valid, max_rank) -> Scores:
    num_valid = int(valid.sum())
    if num_valid == 0:
        raise ValueError("no query has a true match in the gallery (after removing same-camera "
                         "matches): check the pids and camids of query and gallery")
    hist = np.bincount(np.minimum(first_rank[valid], max_rank), minlength=max_rank + 1)
    return Scores(cmc=np.cumsum(hist[:max_rank]) / num_valid, ap=ap, inp=inp,
                  first_rank=first_rank, valid=valid, distances=distmat)


def evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank: int = 50, *,
                  chunk_size: int = 256, num_threads: int | None = None) -> Scores:
    """CMC (up to ``max_rank``), mAP and mINP of a (num_query, num_gallery) distance matrix
    (smaller = closer), with the per-query results. Memory stays at a few bytes per gallery
    item per query of one chunk per thread.
    """
    distmat, q_pids, g_pids, q_camids, g_camids = _check_inputs(
        distmat, q_pids, g_pids, q_camids, g_camids)
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    num_q = distmat.shape[0]
    starts = range(0, num_q, chunk_size)

    def run(start):
        sl = slice(start, start + chunk_size)
        return _evaluate_chunk(distmat[sl], q_pids[sl], q_camids[sl], g_pids, g_camids, max_rank)

    threads = num_threads or min(len(starts), os.cpu_count() or 1)
    if threads > 1:
        with ThreadPoolExecutor(threads) as pool:  # NumPy sorts and ufuncs release the GIL
            parts = list(pool.map(run, starts))
    else:
        parts = [run(s) for s in starts]
    first_rank, ap, inp, valid = (np.concatenate(p) for p in zip(*parts, strict=True))
    return _scores(distmat, first_rank, ap, inp, valid, max_rank)


def kept_ranking(dist_row: np.ndarray, q_pid, q_camid, g_pids: np.ndarray,
                 g_camids: np.ndarray) -> np.ndarray:
    """Gallery indices in the protocol's rank order for one query: ascending distance, ties
    by gallery index, the query identity's images from the query's own camera removed."""
    order = np.argsort(dist_row, kind="stable")
    return order[~((g_pids[order] == q_pid) & (g_camids[order] == q_camid))]


def evaluate_rank_reference(distmat, q_pids, g_pids, q_camids, g_camids,
                            max_rank: int = 50) -> Scores:
    """The protocol as a plain loop over queries, the way the PyTorch toolkits write it.

    Slow (a full sort and boolean indexing per query); kept as the readable definition that
    ``evaluate_rank`` is checked against, and as the baseline of the evaluation benchmark.
    """
    distmat, q_pids, g_pids, q_camids, g_camids = _check_inputs(
        distmat, q_pids, g_pids, q_camids, g_camids)
    num_q, num_g = distmat.shape
    first_rank = np.full(num_q, num_g, dtype=np.int64)
    ap, inp = np.zeros(num_q), np.zeros(num_q)
    valid = np.zeros(num_q, dtype=bool)
    for i in range(num_q):
        order = kept_ranking(distmat[i], q_pids[i], q_camids[i], g_pids, g_camids)
        matches = g_pids[order] == q_pids[i]
        if not matches.any():
            continue
        valid[i] = True
        positions = np.flatnonzero(matches)
        first_rank[i] = positions[0]
        ap[i] = np.mean(np.arange(1, len(positions) + 1) / (positions + 1.0))
        inp[i] = len(positions) / (positions[-1] + 1.0)
    return _scores(distmat, first_rank, ap, inp, valid, max_rank)


def l2_normalize(x):
    """Each row at unit length (a zero row stays zero): the test protocol's normalisation of
    features, and the cosine distance's."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def compute_distance_matrix(query_features, gallery_features, metric: str = "euclidean", *,
                            chunk_size: int = 4096) -> np.ndarray:
    """(num_query, num_gallery) f32 distances, computed with JAX on the default device.

    ``euclidean`` is the true distance ``sqrt(max(d2, 0))``, ``sqeuclidean`` its square and
    ``cosine`` is ``1 - cos``. Matmuls run at full f32 precision (no TF32 on GPUs) because
    rounding in the distances reorders near-ties in the ranking. Queries go through in chunks so
    device memory holds one chunk of the result at a time.
    """
    if metric not in DISTANCE_METRICS:
        raise ValueError(f"metric must be one of {DISTANCE_METRICS}, got {metric!r}")
    qf = np.asarray(query_features, dtype=np.float32)
    gf = jnp.asarray(gallery_features, dtype=jnp.float32)
    if qf.ndim != 2 or gf.ndim != 2 or qf.shape[1] != gf.shape[1]:
        raise ValueError(f"features must be (N, D) with the same D, got {qf.shape} and {gf.shape}")
    out = np.empty((qf.shape[0], gf.shape[0]), np.float32)
    for start in range(0, qf.shape[0], chunk_size):
        out[start:start + chunk_size] = np.asarray(
            pairwise_distances(jnp.asarray(qf[start:start + chunk_size]), gf, metric))
    return out


@functools.partial(jax.jit, static_argnames="metric")
def pairwise_distances(q: jax.Array, g: jax.Array, metric: str) -> jax.Array:
    """``metric``'s (Q, G) distances between two sets of features, on the device: the kernel of
    ``compute_distance_matrix`` and ``dualattn.serving.search.top_k``."""
    hi = jax.lax.Precision.HIGHEST
    if metric == "cosine":
        q, g = l2_normalize(q), l2_normalize(g)
        return 1.0 - jnp.matmul(q, g.T, precision=hi)
    d2 = (jnp.sum(q * q, axis=1)[:, None] + jnp.sum(g * g, axis=1)[None, :]
          - 2.0 * jnp.matmul(q, g.T, precision=hi))
    d2 = jnp.maximum(d2, 0.0)
    return d2 if metric == "sqeuclidean" else jnp.sqrt(d2)
