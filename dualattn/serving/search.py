"""Exact nearest neighbours in a gallery of any size: the gallery streams through the device.

``top_k(query, gallery, k)`` never holds the query x gallery distance matrix. The gallery goes
to the device a block of rows at a time; each block's distances (the evaluator's own kernel,
``dualattn.evaluation.metrics.pairwise_distances``, at full float32 precision) are reduced to
their ``k`` smallest per query and merged with the best so far, on the device, one block in
flight while the next is copied. The working set is two or three blocks of features and
distances, ``WORKING_SET`` bytes each, whatever the gallery's size (about 350 MiB with JAX's
own runtime, measured), beside the gallery's features themselves (which may be a
``np.memmap``, then not in memory either).
Ties go to the lower gallery index, as a stable sort of the full row orders them.

``backend="faiss"`` hands the search to faiss's exact flat index (``pip install -e
".[search]"``), which copies the gallery into its own memory; BENCHMARKS.md ("Search at gallery
scale") sets the two side by side with NumPy's ``argpartition`` over the full matrix.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from dualattn.errors import UserError
from dualattn.evaluation.metrics import DISTANCE_METRICS, pairwise_distances

WORKING_SET = 1 << 26  # bytes per block of gallery features and their distances: 64 MiB
BACKENDS = ("exact", "faiss")


class SearchError(UserError, RuntimeError):
    """The search cannot run as asked; the message says how to make it."""


@functools.partial(jax.jit, static_argnames=("k", "metric"))
def _merge(query, block, offset, best_dist, best_index, *, k: int, metric: str):
    """The ``k`` nearest of the best so far and of ``block`` (gallery rows from ``offset``)."""
    dist = pairwise_distances(query, block, metric)
    neg, index = jax.lax.top_k(-dist, min(k, block.shape[0]))
    # Earlier rows first, so that top_k's lower-position-first rule breaks ties by gallery row.
    cand_dist = jnp.concatenate([best_dist, -neg], axis=1)
    cand_index = jnp.concatenate([best_index, index + offset], axis=1)
    neg, pos = jax.lax.top_k(-cand_dist, k)
    return -neg, jnp.take_along_axis(cand_index, pos, axis=1)


def top_k(query, gallery, k: int, *, metric: str = "euclidean", backend: str = "exact",
          block_rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(indices, distances)``, each (num_query, min(k, num_gallery)), nearest first."""
    if metric not in DISTANCE_METRICS:
        raise ValueError(f"metric must be one of {DISTANCE_METRICS}, got {metric!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    query = np.asarray(query, np.float32)
    if query.ndim != 2 or gallery.ndim != 2 or query.shape[1] != gallery.shape[1]:
        raise ValueError(f"features must be (N, D) with the same D, got {query.shape} and "
                         f"{gallery.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(k, gallery.shape[0])
    if backend == "faiss":
        return _faiss_top_k(query, gallery, k, metric)
    # A block's features and its distances to every query together fill the working set.
    rows = block_rows or max(k, WORKING_SET // (4 * (len(query) + gallery.shape[1])))
    q = jnp.asarray(query)
    # Placeholders at infinity: every block's shapes but the last are the same, one program.
    best_dist = jnp.full((len(query), k), jnp.inf, jnp.float32)
    best_index = jnp.full((len(query), k), -1, jnp.int32)
    previous = None
    for start in range(0, gallery.shape[0], rows):
        block = jnp.asarray(np.asarray(gallery[start:start + rows], np.float32))
        best_dist, best_index = _merge(q, block, start, best_dist, best_index, k=k,
                                       metric=metric)
        # JAX dispatches asynchronously: without waiting, the loop would copy every block to
        # the device before the first is searched. One block in flight, one being copied.
        if previous is not None:
            previous.block_until_ready()
        previous = best_dist
    return np.asarray(best_index, np.int64), np.asarray(best_dist)


def _faiss_top_k(query, gallery, k, metric):
    try:
        import faiss
    except ImportError:
        raise SearchError('faiss is not installed: pip install -e ".[search]" (or '
                          "faiss-cpu), or search with the exact backend") from None
    gallery = np.ascontiguousarray(gallery, np.float32)
    if metric == "cosine":
        unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)  # noqa: E731
        index = faiss.IndexFlatIP(gallery.shape[1])
        index.add(unit(gallery))
        sims, idx = index.search(unit(query), k)
        return idx.astype(np.int64), (1.0 - sims).astype(np.float32)
    index = faiss.IndexFlatL2(gallery.shape[1])
    index.add(gallery)
    d2, idx = index.search(query, k)
    d2 = np.maximum(d2, 0.0)
    return idx.astype(np.int64), (d2 if metric == "sqeuclidean" else np.sqrt(d2)).astype(np.float32)
