"""Average query expansion (alpha-QE, Radenovic et al. 2018), fast-reid's test-time option.

Every feature, query and gallery alike, is replaced by the weighted mean of its ``k``
nearest features among all of them (itself included, by cosine similarity), each weighted
by its similarity to the power ``alpha``; ``times`` rounds, each ranking by the features of
the round before. As fast-reid (``fastreid/evaluation/query_expansion.py``) computes it, the
mean is over the features as given, while the neighbours and weights come from their unit
vectors; its defaults are ``k=5``, ``alpha=3``, one round. Distances are then computed from
the expanded features (and re-ranked, if that is on too).

The similarities are computed on the device, ``chunk_size`` rows at a time against all
features, keeping only each row's top ``k``: memory is the features plus one chunk, whatever
the gallery's size. ``average_query_expansion_reference`` is the definition in NumPy, one
row at a time; the tests hold the fast path to it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from dualattn.evaluation.metrics import l2_normalize


@functools.partial(jax.jit, static_argnames="k")
def _top_k(rows: jax.Array, unit: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    sims = jnp.matmul(rows, unit.T, precision=jax.lax.Precision.HIGHEST)
    return jax.lax.top_k(sims, k)


@jax.jit
def _weighted_mean(features, sims, neighbours, alpha):
    weights = jnp.power(sims, alpha)[..., None]
    return jnp.mean(features[neighbours] * weights, axis=1)


def average_query_expansion(query, gallery, *, k: int = 5, alpha: float = 3.0,
                            times: int = 1, chunk_size: int = 4096):
    """``(query, gallery)`` float32 features after ``times`` rounds of alpha-QE."""
    features = jnp.concatenate([jnp.asarray(query, jnp.float32),
                                jnp.asarray(gallery, jnp.float32)])
    if not 1 <= k <= features.shape[0]:
        raise ValueError(f"k must be in 1..{features.shape[0]} (the number of features), "
                         f"got {k}")
    for _ in range(times):
        unit = l2_normalize(features)
        rows = []
        for start in range(0, features.shape[0], chunk_size):
            sims, neighbours = _top_k(unit[start:start + chunk_size], unit, k)
            rows.append(_weighted_mean(features, sims, neighbours, alpha))
        features = jnp.concatenate(rows)
    out = np.asarray(features)
    return out[:len(query)], out[len(query):]


def average_query_expansion_reference(query, gallery, *, k: int = 5, alpha: float = 3.0,
                                      times: int = 1):
    """The definition, one feature at a time, in float64."""
    features = np.concatenate([query, gallery]).astype(np.float64)
    for _ in range(times):
        unit = features / np.linalg.norm(features, axis=1, keepdims=True)
        expanded = []
        for row in unit:
            sims = unit @ row
            nearest = np.argsort(-sims, kind="stable")[:k]
            expanded.append(np.mean(features[nearest] * sims[nearest, None] ** alpha, axis=0))
        features = np.stack(expanded)
    return features[:len(query)], features[len(query):]
