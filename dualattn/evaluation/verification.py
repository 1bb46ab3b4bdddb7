"""Verification metrics: how many true pairs a distance threshold accepts at a given rate of
false ones, over the protocol's query-gallery pairs.

The pairs are those the CMC protocol ranks (``dualattn.evaluation.metrics``): for each
query, every gallery item except its identity's shots from its own camera (junk); a pair is
positive when the identities agree. A threshold ``t`` accepts the pairs closer than it; its
true positive rate is the accepted share of the positives, its false positive rate that of
the negatives. ``TPR@FPR=f`` is the largest true positive rate of a threshold whose false
positive rate is at most ``f``: the share of positives closer than the ``(floor(f*N)+1)``-th
closest negative, of ``N``.

fast-reid reports the same three rates (1e-4, 1e-3, 1e-2) from scikit-learn's ROC curve, at
the curve's vertex nearest ``f``, on either side of it; the two differ by at most one step
of the curve there (README, "Evaluate, search, serve").

At MSMT17 size there are 9.6e8 pairs, too many to sort. The closest negatives are found
exactly in two passes over the distance matrix instead: a histogram of the negatives' float32
bit patterns (which order like the floats) into 2^20 buckets finds the bucket that holds each
order statistic, and a second pass sorts only that bucket's values. ``tpr_at_fpr_reference``
is the definition written plainly (every pair sorted), which the tests hold the fast path to.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

FPRS = (1e-4, 1e-3, 1e-2)
_BUCKET_SHIFT = 12  # 32-bit keys -> 2^20 buckets


def rate_name(fpr: float) -> str:
    """The logged name of ``TPR@FPR=fpr``: ``tpr@fpr1e-04``."""
    return f"tpr@fpr{fpr:.0e}"


def pair_masks(q_pids, q_cams, g_pids, g_cams) -> tuple[np.ndarray, np.ndarray]:
    """The positive and negative pairs of (a chunk of) queries against the gallery, as masks;
    junk (the query identity's shots from its own camera) is in neither."""
    match = q_pids[:, None] == g_pids[None, :]
    junk = match & (q_cams[:, None] == g_cams[None, :])
    return match & ~junk, ~match


def _keys(values: np.ndarray) -> np.ndarray:
    """uint32 keys that order like the float32 ``values``."""
    bits = np.ascontiguousarray(values, np.float32).view(np.uint32)
    return np.where(bits >> 31, ~bits, bits | np.uint32(0x80000000))


def tpr_at_fpr(distmat, q_pids, g_pids, q_camids, g_camids, fprs=FPRS,
               chunk_size: int = 256, num_threads: int | None = None) -> dict[float, float]:
    """``{f: TPR@FPR=f}`` of a (num_query, num_gallery) distance matrix (smaller = closer);
    NaN where there is no positive or no negative pair. Memory: a chunk of rows per thread."""
    distmat = np.asarray(distmat, np.float32)
    q_pids, g_pids, q_cams, g_cams = (np.asarray(a).reshape(-1)
                                      for a in (q_pids, g_pids, q_camids, g_camids))
    starts = range(0, distmat.shape[0], chunk_size)
    buckets = 1 << (32 - _BUCKET_SHIFT)

    def chunk(start):
        """The chunk's distances, positives' mask, and every pair's bucket (``buckets`` for
        the pairs that are not negative)."""
        sl = slice(start, start + chunk_size)
        dist = distmat[sl]
        pos, neg = pair_masks(q_pids[sl], q_cams[sl], g_pids, g_cams)
        return dist, pos, np.where(neg, _keys(dist) >> _BUCKET_SHIFT, buckets)

    def histogram(start):
        dist, pos, bucket = chunk(start)
        return dist[pos], np.bincount(bucket.ravel(), minlength=buckets + 1)[:buckets]

    threads = num_threads or min(len(starts), os.cpu_count() or 1)
    with ThreadPoolExecutor(threads) as pool:  # NumPy's ufuncs release the GIL
        positives, counts = zip(*pool.map(histogram, starts), strict=True)
        positives, counts = np.concatenate(positives), np.sum(counts, axis=0)
        total = int(counts.sum())
        if total == 0 or positives.size == 0:
            return {f: float("nan") for f in fprs}
        # The first negative a threshold at rate f must reject: index floor(f*N), sorted.
        index = {f: int(np.floor(f * total)) for f in fprs}
        cumulative = np.cumsum(counts)
        bucket_of = {f: int(np.searchsorted(cumulative, k, side="right"))
                     for f, k in index.items()}
        wanted = sorted(set(bucket_of.values()))

        def gather(start):
            dist, _, bucket = chunk(start)
            return [dist[bucket == b] for b in wanted]

        inside = [np.concatenate(parts) for parts in zip(*pool.map(gather, starts),
                                                          strict=True)]
    out = {}
    for f, k in index.items():
        b = bucket_of[f]
        before = int(cumulative[b - 1]) if b else 0
        limit = np.sort(inside[wanted.index(b)])[k - before]
        out[f] = float((positives < limit).sum() / positives.size)
    return out


def tpr_at_fpr_reference(distmat, q_pids, g_pids, q_camids, g_camids,
                         fprs=FPRS) -> dict[float, float]:
    """The definition, plainly: every pair's distance sorted, the ROC read at each distinct
    threshold, and the best true positive rate whose false positive rate is at most ``f``."""
    distmat = np.asarray(distmat, np.float64)
    pos, neg = pair_masks(*(np.asarray(a).reshape(-1)
                            for a in (q_pids, q_camids, g_pids, g_camids)))
    scores = np.concatenate([distmat[pos], distmat[neg]])
    positive = np.concatenate([np.ones(pos.sum(), bool), np.zeros(neg.sum(), bool)])
    if positive.all() or not positive.any():
        return {f: float("nan") for f in fprs}
    out = {}
    for f in fprs:
        best = 0.0  # a threshold below every pair accepts nothing
        for t in np.unique(scores):
            accepted = scores <= t
            fpr = (accepted & ~positive).sum() / (~positive).sum()
            if fpr <= f:
                best = max(best, (accepted & positive).sum() / positive.sum())
        out[f] = float(best)
    return out
