"""k-reciprocal re-ranking (Zhong et al., CVPR 2017) that fits MSMT17 in host memory.

The published algorithm builds dense (q+g) x (q+g) matrices: the distances, their ranks, the
encoded neighbourhoods ``V``. At MSMT17 size (11,659 + 82,161 images) each is 35 GB. None of
them is needed densely:

- each row's ranking is only read at its first ``k1 + 1`` entries, so one sweep over row
  chunks keeps the top ``k1 + 1`` neighbours (and each row's maximum, for the published
  per-row normalisation) and drops the chunk;
- ``V`` has at most ``(k1 + 1) * (1 + round(k1 / 2) + 1)`` non-zeros per row (the
  k-reciprocal set and its expansions), a few hundred of 93,820, so it is kept sparse, as is
  its query expansion over ``k2`` neighbours;
- the Jaccard distance of a query to the gallery, ``1 - sum_k min(V_q, V_g) / sum_k max(...)``,
  only involves the columns where the query's row is non-zero, so an inverted index of the
  gallery rows of ``V`` gives it query by query in time proportional to the overlap.

What remains dense is the output, queries x gallery. Distances, row maxima and the
neighbour search run in JAX (on the GPU when there is one) from the features; the set logic
and the sparse Jaccard sums run in NumPy. ``re_ranking`` keeps the published interface on
dense matrices; ``re_ranking_features`` is the one for large galleries.
``re_ranking_reference`` is a direct transcription of the published algorithm, dense, for
tests and as the benchmark's baseline.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

# ---------------------------------------------------------------------------------------------
# The published algorithm, dense (reference)


def re_ranking_reference(q_g_dist: np.ndarray, q_q_dist: np.ndarray, g_g_dist: np.ndarray,
                         k1: int = 20, k2: int = 6, lambda_value: float = 0.3) -> np.ndarray:
    """Zhong et al.'s re-ranking exactly as published: O((q+g)^2) memory, per-row loops."""
    dist = np.block([[q_q_dist, q_g_dist], [q_g_dist.T, g_g_dist]]).astype(np.float64) ** 2
    dist = (dist / dist.max(axis=0)).T  # each row divided by its (symmetric) column maximum
    n, q = dist.shape[0], q_g_dist.shape[0]
    rank = np.argsort(dist, axis=1, kind="stable")
    half = int(np.around(k1 / 2)) + 1

    def reciprocal(i: int, k: int) -> np.ndarray:
        forward = rank[i, :k]
        backward = rank[forward, :k]
        return forward[np.where(backward == i)[0]]

    v = np.zeros_like(dist)
    for i in range(n):
        r = reciprocal(i, k1 + 1)
        expansion = r
        for candidate in r:
            rc = reciprocal(candidate, half)
            if len(np.intersect1d(rc, r)) > 2 / 3 * len(rc):
                expansion = np.append(expansion, rc)
        expansion = np.unique(expansion)
        weight = np.exp(-dist[i, expansion])
        v[i, expansion] = weight / weight.sum()
    if k2 != 1:
        v = np.stack([v[rank[i, :k2]].mean(axis=0) for i in range(n)])
    jaccard = np.zeros((q, n))
    for i in range(q):
        overlap = np.minimum(v[i], v).sum(axis=1)
        jaccard[i] = 1 - overlap / (2 - overlap)
    final = jaccard * (1 - lambda_value) + dist[:q] * lambda_value
    return final[:, q:].astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Distance sources: row chunks of the (q+g) x (q+g) distance matrix, never all of it


class _DenseSource:
    """The published interface's three matrices, read block by block."""

    def __init__(self, q_g, q_q, g_g):
        self.q_g, self.q_q, self.g_g = (np.asarray(m, np.float32) for m in (q_g, q_q, g_g))
        self.q, self.n = self.q_g.shape[0], self.q_g.shape[0] + self.q_g.shape[1]

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Distances of rows ``start:stop`` (queries first, then gallery) to all n items."""
        q = self.q
        parts = []
        if start < q:
            s, e = start, min(stop, q)
            parts.append(np.concatenate([self.q_q[s:e], self.q_g[s:e]], axis=1))
        if stop > q:
            s, e = max(start, q) - q, stop - q
            parts.append(np.concatenate([self.q_g[:, s:e].T, self.g_g[s:e]], axis=1))
        return np.concatenate(parts)

    def pairs(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Distances of (rows[:, None], cols) pairs, any indices."""
        r = np.broadcast_to(rows[:, None], cols.shape)
        out = np.empty(cols.shape, np.float32)
        for rq, cq, m in ((True, True, self.q_q), (True, False, self.q_g),
                          (False, False, self.g_g)):
            sel = ((r < self.q) == rq) & ((cols < self.q) == cq)
            out[sel] = m[r[sel] - (0 if rq else self.q), cols[sel] - (0 if cq else self.q)]
        sel = (r >= self.q) & (cols < self.q)  # gallery x query: the transposed q_g
        out[sel] = self.q_g[cols[sel], r[sel] - self.q]
        return out


class _FeatureSource:
    """Euclidean distances computed from features on the device, chunk by chunk."""

    def __init__(self, query: np.ndarray, gallery: np.ndarray):
        feats = np.concatenate([query, gallery]).astype(np.float32)
        self.q, self.n = len(query), len(feats)
        self.feats = jnp.asarray(feats)
        self.sq = jnp.sum(self.feats ** 2, axis=1)

    def rows(self, start: int, stop: int) -> np.ndarray:
        return np.asarray(_euclidean_rows(self.feats[start:stop], self.sq[start:stop],
                                          self.feats, self.sq))

    def pairs(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return np.asarray(_euclidean_pairs(self.feats, self.sq, jnp.asarray(rows),
                                           jnp.asarray(cols)))


@jax.jit
def _euclidean_rows(a, a_sq, b, b_sq):
    dot = jnp.matmul(a, b.T, precision=jax.lax.Precision.HIGHEST)
    return jnp.sqrt(jnp.maximum(a_sq[:, None] + b_sq[None, :] - 2 * dot, 0.0))


@jax.jit
def _euclidean_pairs(feats, sq, rows, cols):
    dot = jnp.einsum("rd,rwd->rw", feats[rows], feats[cols],
                     precision=jax.lax.Precision.HIGHEST)
    return jnp.sqrt(jnp.maximum(sq[rows][:, None] + sq[cols] - 2 * dot, 0.0))


# ---------------------------------------------------------------------------------------------
# The sparse algorithm


def _neighbours(source, k: int, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``k`` nearest items (ties by index, as a stable sort gives) and the maximum
    of its squared distances."""
    knn = np.empty((source.n, k), np.int32)
    row_max = np.empty(source.n, np.float64)
    for start in range(0, source.n, chunk):
        d = source.rows(start, min(start + chunk, source.n)).astype(np.float64) ** 2
        row_max[start:start + len(d)] = d.max(axis=1)
        part = np.argpartition(d, k - 1, axis=1)[:, :k]
        vals = np.take_along_axis(d, part, axis=1)
        order = np.lexsort((part, vals), axis=1)  # by value, then index (a stable sort's order)
        knn[start:start + len(d)] = np.take_along_axis(part, order, axis=1)
        # Where a tie straddles the k-th place, argpartition chose among the tied items
        # arbitrarily; redo those (rare) rows with all tied items in view.
        kth = vals.max(axis=1, keepdims=True)
        for i in np.flatnonzero((d <= kth).sum(axis=1) > k):
            idx = np.flatnonzero(d[i] <= kth[i])
            knn[start + i] = idx[np.lexsort((idx, d[i, idx]))[:k]]
    return knn, row_max


def _reciprocal(knn: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """k-reciprocal neighbours of every row: ``j`` in the first ``k`` of ``i`` and ``i`` in the
    first ``k`` of ``j``. Padded ``(n, k)`` indices (order of the ranking) and a mask."""
    forward = knn[:, :k]
    mask = np.empty(forward.shape, bool)
    for start in range(0, len(knn), 4096):
        f = forward[start:start + 4096]
        rows = np.arange(start, start + len(f))[:, None, None]
        mask[start:start + len(f)] = (knn[f][:, :, :k] == rows).any(axis=2)
    return forward, mask


def _encode(source, knn: np.ndarray, row_max: np.ndarray, k1: int, chunk: int):
    """The sparse rows of ``V``: for each item, its expanded k-reciprocal set and Gaussian
    weights of its normalised distances to them, as CSR ``(indptr, indices, values)``."""
    half = int(np.around(k1 / 2)) + 1
    r_idx, r_mask = _reciprocal(knn, k1 + 1)
    h_idx, h_mask = _reciprocal(knn, half)
    h_count = h_mask.sum(axis=1)
    indices, values, lengths = [], [], []
    for start in range(0, source.n, chunk):
        stop = min(start + chunk, source.n)
        ri, rm = r_idx[start:stop], r_mask[start:stop]  # (c, K)
        hi, hm = h_idx[ri], h_mask[ri]  # candidates' half sets (c, K, H)
        # |half(j) & R(i)| for each candidate j in R(i)
        member = (hi[..., None] == np.where(rm, ri, -1)[:, None, None, :]).any(axis=3) & hm
        take = rm & (member.sum(axis=2) > 2 / 3 * h_count[ri])
        sentinel = source.n
        cand = np.concatenate([np.where(rm, ri, sentinel),
                               np.where(take[..., None] & hm, hi, sentinel).reshape(len(ri), -1)],
                              axis=1)
        cand.sort(axis=1)
        keep = (cand != sentinel) & np.concatenate(
            [np.ones((len(cand), 1), bool), cand[:, 1:] != cand[:, :-1]], axis=1)
        rows = np.arange(start, stop)
        d = source.pairs(rows, np.where(keep, cand, 0)).astype(np.float64) ** 2
        d /= row_max[rows][:, None]
        w = np.where(keep, np.exp(-d), 0.0)
        w /= w.sum(axis=1, keepdims=True)
        indices.append(cand[keep])  # row-major: each row's columns, ascending
        values.append(w[keep])
        lengths.append(keep.sum(axis=1))
    indptr = np.concatenate([[0], np.cumsum(np.concatenate(lengths))])
    return indptr, np.concatenate(indices).astype(np.int32), np.concatenate(values)


def _csr_rows(indptr, indices, values, rows: np.ndarray):
    """Concatenated entries of ``rows``: (row position in ``rows``, column, value)."""
    lengths = indptr[rows + 1] - indptr[rows]
    pos = np.repeat(indptr[rows] - np.cumsum(np.r_[0, lengths[:-1]]), lengths) \
        + np.arange(lengths.sum())
    return np.repeat(np.arange(len(rows)), lengths), indices[pos], values[pos]


def _query_expansion(indptr, indices, values, knn: np.ndarray, k2: int, chunk: int):
    """``V_qe[i] = mean of V over i's k2 nearest items``, sparse (duplicate columns summed)."""
    out_idx, out_val, lengths = [], [], []
    for start in range(0, len(knn), chunk):
        nbrs = knn[start:start + chunk, :k2]
        owner, col, val = _csr_rows(indptr, indices, values, nbrs.ravel())
        row = owner // k2
        order = np.lexsort((col, row))
        row, col, val = row[order], col[order], val[order] / k2
        first = np.r_[True, (row[1:] != row[:-1]) | (col[1:] != col[:-1])]
        starts = np.flatnonzero(first)
        out_idx.append(col[starts])
        out_val.append(np.add.reduceat(val, starts))
        lengths.append(np.bincount(row[starts], minlength=len(nbrs)))
    indptr = np.concatenate([[0], np.cumsum(np.concatenate(lengths))])
    return indptr, np.concatenate(out_idx), np.concatenate(out_val)


def _re_rank(source, k1: int, k2: int, lambda_value: float, chunk: int) -> np.ndarray:
    if not 1 <= k2 <= k1 + 1:
        raise ValueError(f"need 1 <= k2 <= k1 + 1, got k1={k1}, k2={k2}")
    q, n = source.q, source.n
    g = n - q
    knn, row_max = _neighbours(source, k1 + 1, chunk)
    v = _encode(source, knn, row_max, k1, chunk)
    if k2 != 1:
        v = _query_expansion(*v, knn, k2, chunk)
    indptr, indices, values = v
    # Inverted index over the gallery rows of V: for each column, its (gallery row, value).
    g_owner, g_col, g_val = _csr_rows(indptr, indices, values, np.arange(q, n))
    order = np.argsort(g_col, kind="stable")
    post_row, post_val = g_owner[order], g_val[order]
    colptr = np.searchsorted(g_col[order], np.arange(n + 1))
    final = np.empty((q, g), np.float32)
    # Each query's overlap touches (its non-zeros) x (their postings) entries, a few 1e4 to
    # 1e5: smaller chunks keep these temporaries near 100 MB at MSMT17 size.
    q_chunk = max(1, chunk // 8)
    for start in range(0, q, q_chunk):
        stop = min(start + q_chunk, q)
        owner, col, a = _csr_rows(indptr, indices, values, np.arange(start, stop))
        lengths = colptr[col + 1] - colptr[col]
        pos = np.repeat(colptr[col] - np.cumsum(np.r_[0, lengths[:-1]]), lengths) \
            + np.arange(lengths.sum())
        overlap = np.bincount(np.repeat(owner, lengths) * g + post_row[pos],
                              weights=np.minimum(np.repeat(a, lengths), post_val[pos]),
                              minlength=(stop - start) * g).reshape(stop - start, g)
        jaccard = 1 - overlap / (2 - overlap)
        d = source.rows(start, stop)[:, q:].astype(np.float64) ** 2 / row_max[start:stop, None]
        final[start:stop] = jaccard * (1 - lambda_value) + d * lambda_value
    return final


def re_ranking(q_g_dist: np.ndarray, q_q_dist: np.ndarray, g_g_dist: np.ndarray,
               k1: int = 20, k2: int = 6, lambda_value: float = 0.3,
               chunk: int = 1024) -> np.ndarray:
    """Re-ranked query x gallery distances from the three distance matrices (the published
    interface). Memory: the inputs, the output and O((q+g) * k1^2) for the neighbourhoods."""
    return _re_rank(_DenseSource(q_g_dist, q_q_dist, g_g_dist), k1, k2, lambda_value, chunk)


def re_ranking_features(query_features: np.ndarray, gallery_features: np.ndarray,
                        k1: int = 20, k2: int = 6, lambda_value: float = 0.3,
                        chunk: int = 1024) -> np.ndarray:
    """The same from features, with Euclidean distances computed in chunks of ``chunk`` rows:
    no (q+g)^2 or g^2 matrix exists at any point, so MSMT17-size galleries fit in memory.
    Equals ``re_ranking`` on ``compute_distance_matrix(..., "euclidean")`` matrices."""
    if math.prod(query_features.shape[1:]) != math.prod(gallery_features.shape[1:]):
        raise ValueError("query and gallery features differ in dimension")
    return _re_rank(_FeatureSource(query_features, gallery_features), k1, k2, lambda_value,
                    chunk)
