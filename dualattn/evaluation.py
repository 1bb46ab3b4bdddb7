"""Test features of a split, their distances and the protocol's scores: the evaluation that
training and ``dualattn.evaluate`` share.

Features come from a jitted eval step over the data-parallel mesh (each process decodes its
share of every batch), gathered on every host in record order, and L2-normalised if the config
says so. Distances are the config's metric, or k-reciprocal re-ranked; scores are CMC
(rank-1/5/10), mAP and mINP by the Market-1501 protocol (``dualattn.metrics``).
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from data_pipeline.input_pipeline import eval_dataset
from dualattn.augment import normalize
from dualattn.data import Data
from dualattn.metrics import compute_distance_matrix, evaluate
from dualattn.rerank import re_ranking_features


def eval_step(graphdef, state, images, *, flip: bool = False, feature: str | None = None):
    """Test features of a uint8 batch from the model's ``(graphdef, state)``; with ``flip``,
    the mean of the image's and its mirror's."""
    model = nnx.merge(graphdef, state)
    x = normalize(images)
    feats = model(x, train=False, feature=feature)
    if flip:
        feats = (feats + model(x[:, :, ::-1], train=False, feature=feature)) / 2
    return feats


def make_eval_fn(config, feature: str | None = None):
    """The jitted ``eval_step`` with the config's test-time options (``feature`` overrides
    ``model.test_feature``)."""
    return jax.jit(functools.partial(eval_step, flip=config.eval.flip_test, feature=feature),
                   static_argnums=0)


def l2_normalize(feats: np.ndarray) -> np.ndarray:
    """Each row at unit length (a zero row stays zero): the test protocol's normalisation."""
    return feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)


def extract_features(eval_fn, graphdef, state, source, config, batch_sharding) -> np.ndarray:
    """Test features of every record of ``source``, in order, gathered on every host."""
    chunks, indices = [], []
    for batch in eval_dataset(source, batch_size=config.input.eval_batch_size,
                              image_size=(config.input.height, config.input.width),
                              process_index=jax.process_index(),
                              process_count=jax.process_count()):
        images = jax.make_array_from_process_local_data(batch_sharding, batch["image"])
        out = multihost_utils.process_allgather(eval_fn(graphdef, state, images), tiled=True)
        idx = multihost_utils.process_allgather(batch["index"], tiled=True)
        mask = multihost_utils.process_allgather(batch["mask"], tiled=True)
        chunks.append(np.asarray(out)[mask])
        indices.append(idx[mask])
    feats = np.concatenate(chunks)[np.argsort(np.concatenate(indices), kind="stable")]
    if config.eval.normalize_features:
        feats = l2_normalize(feats)
    return feats


def query_gallery_features(eval_fn, graphdef, state, data: Data, config,
                           batch_sharding) -> tuple[np.ndarray, np.ndarray]:
    """``extract_features`` of the query and of the gallery split."""
    return tuple(extract_features(eval_fn, graphdef, state, data.sources[split], config,
                                  batch_sharding) for split in ("query", "gallery"))


def distance_matrix(q: np.ndarray, g: np.ndarray, config,
                    rerank: bool | None = None) -> np.ndarray:
    """Query x gallery distances with ``config.eval``'s metric, or re-ranked (Euclidean, by
    the method's definition) if ``config.eval.rerank`` or ``rerank``."""
    e = config.eval
    if e.rerank if rerank is None else rerank:
        return re_ranking_features(q, g, e.rerank_k1, e.rerank_k2, e.rerank_lambda)
    return np.asarray(compute_distance_matrix(q, g, e.metric))


# The rates of a result (fractions); its counts are "valid_queries" of "queries".
RATES = ("rank1", "rank5", "rank10", "mAP", "mINP")


def describe(result: dict) -> str:
    """One line: the rates in percent, then how many queries could be scored. A query whose
    identity has no image in the gallery from another camera has no valid match, and the
    rates are over the others (the standard protocol), so the count says what they cover."""
    return ("  ".join(f"{k} {100 * result[k]:.2f}%" for k in RATES)
            + f"  ({coverage(result)})")


def coverage(result: dict) -> str:
    return f"{result['valid_queries']} of {result['queries']} queries have a valid match"


def evaluate_features(q: np.ndarray, g: np.ndarray, data: Data, config,
                      rerank: bool | None = None) -> dict:
    """``dualattn.metrics.evaluate``'s result (the CMC curve up to ``eval.max_rank``, mAP,
    mINP, query counts) of query features ``q`` against gallery features ``g``, at
    ``config.eval``'s distance, re-ranked if configured or ``rerank``."""
    dist = distance_matrix(q, g, config, rerank=rerank)
    (q_pids, q_cams), (g_pids, g_cams) = data.ids["query"], data.ids["gallery"]
    return evaluate(dist, q_pids, g_pids, q_cams, g_cams, max_rank=config.eval.max_rank)


def rates(r: dict) -> dict:
    """Rank-1/5/10, mAP and mINP (fractions) of an ``evaluate_features`` result, and how many
    queries they cover (``valid_queries`` of ``queries``)."""
    cmc = r["cmc"]
    return {"rank1": float(cmc[0]), "rank5": float(cmc[min(4, len(cmc) - 1)]),
            "rank10": float(cmc[min(9, len(cmc) - 1)]), "mAP": r["mAP"], "mINP": r["mINP"],
            "valid_queries": r["num_valid_queries"], "queries": r["num_queries"]}


def score_features(q: np.ndarray, g: np.ndarray, data: Data, config,
                   rerank: bool | None = None) -> dict:
    """``rates`` of ``evaluate_features``."""
    return rates(evaluate_features(q, g, data, config, rerank))

