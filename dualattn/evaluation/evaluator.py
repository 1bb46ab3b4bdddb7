"""The evaluator every stage uses: built once from the config, the data and the sharding;
``features(model)`` gives the test split's features, ``score(features)`` one ``Scores``.

Features come from a jitted pass over the data-parallel mesh (each process decodes its share
of every batch), gathered on every host in record order, with the test protocol inside the
pass (``protocol_features``: normalisation, the test feature, the flip average, L2
normalisation), the same function ``FeatureExtractor`` and the StableHLO export run. Each
score computes one distance matrix (the config's metric, or k-reciprocal re-ranked) and
keeps it in the ``Scores`` it returns, for the figures and the report.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from data_pipeline.input_pipeline import eval_dataset
from dualattn.evaluation.metrics import compute_distance_matrix, evaluate_rank, l2_normalize
from dualattn.evaluation.query_expansion import average_query_expansion
from dualattn.evaluation.rerank import re_ranking_features
from dualattn.evaluation.scores import Scores
from dualattn.evaluation.verification import tpr_at_fpr
from dualattn.models.preprocess import normalize
from dualattn.run.data import Data
from dualattn.run.mesh import data_parallel_shardings

Features = tuple[np.ndarray, np.ndarray]  # (query, gallery), float32, in record order


def protocol_features(graphdef, state, images, *, flip: bool = False, feature: str | None = None,
                  normalize_features: bool = False) -> jax.Array:
    """float32 test features of a uint8 NHWC batch from a model's ``(graphdef, state)``: with
    ``flip`` the mean of the image's and its mirror's, with ``normalize_features`` at unit
    length; ``feature`` ("after"/"before" the BNNeck) overrides the model's test feature."""
    model = nnx.merge(graphdef, state)
    x = normalize(images)
    feats = model(x, train=False, feature=feature)
    if flip:
        feats = (feats + model(x[:, :, ::-1], train=False, feature=feature)) / 2
    feats = feats.astype(jnp.float32)
    return l2_normalize(feats) if normalize_features else feats


class ReIDEvaluator:
    """Features and scores of models on ``data``'s test split, by ``config.eval``'s protocol.

    ``model`` arguments are anything with ``graphdef`` and ``state`` (a
    ``dualattn.run.model.InferenceModel``).
    """

    def __init__(self, config, data: Data, batch_sharding=None):
        self.config, self.data = config, data
        self.batch_sharding = batch_sharding or data_parallel_shardings()[0]
        self._passes = {}

    def _pass(self, feature: str | None, flip: bool):
        """The jitted ``protocol_features``, one per (feature, flip)."""
        key = (feature, flip)
        if key not in self._passes:
            self._passes[key] = jax.jit(functools.partial(
                protocol_features, flip=flip, feature=feature,
                normalize_features=self.config.eval.normalize_features), static_argnums=0)
        return self._passes[key]

    def split_features(self, model, split: str, *, feature: str | None = None,
                       flip: bool | None = None) -> np.ndarray:
        """Test features of every record of ``split``, in order, gathered on every host."""
        c = self.config
        fn = self._pass(feature, c.eval.flip_test if flip is None else flip)
        chunks, indices = [], []
        for batch in eval_dataset(self.data.sources[split], batch_size=c.input.eval_batch_size,
                                  image_size=(c.input.height, c.input.width),
                                  process_index=jax.process_index(),
                                  process_count=jax.process_count()):
            images = jax.make_array_from_process_local_data(self.batch_sharding, batch["image"])
            out = multihost_utils.process_allgather(fn(model.graphdef, model.state, images),
                                                    tiled=True)
            idx = multihost_utils.process_allgather(batch["index"], tiled=True)
            mask = multihost_utils.process_allgather(batch["mask"], tiled=True)
            chunks.append(np.asarray(out)[mask])
            indices.append(idx[mask])
        return np.concatenate(chunks)[np.argsort(np.concatenate(indices), kind="stable")]

    def features(self, model, *, feature: str | None = None,
                 flip: bool | None = None) -> Features:
        """``split_features`` of the query and of the gallery split; ``feature`` and ``flip``
        override ``model.test_feature`` and ``eval.flip_test``."""
        return tuple(self.split_features(model, split, feature=feature, flip=flip)
                     for split in ("query", "gallery"))

    def distances(self, features: Features, *, rerank: bool | None = None,
                  metric: str | None = None, aqe: bool | None = None) -> np.ndarray:
        """Query x gallery distances: ``eval.metric`` (or ``metric``), or k-reciprocal
        re-ranked (Euclidean, by the method's definition) if ``eval.rerank`` (or
        ``rerank``); of the features after average query expansion first if ``eval.aqe`` (or
        ``aqe``)."""
        e = self.config.eval
        q, g = self.expanded(features) if (e.aqe if aqe is None else aqe) else features
        if e.rerank if rerank is None else rerank:
            return re_ranking_features(q, g, e.rerank_k1, e.rerank_k2, e.rerank_lambda)
        return compute_distance_matrix(q, g, metric or e.metric)

    def expanded(self, features: Features) -> Features:
        """``features`` after average query expansion with ``eval``'s parameters."""
        e = self.config.eval
        return average_query_expansion(*features, k=e.aqe_k, alpha=e.aqe_alpha,
                                       times=e.aqe_times)

    def score(self, features: Features, *, rerank: bool | None = None,
              metric: str | None = None, aqe: bool | None = None) -> Scores:
        """The protocol's scores of ``features``, CMC, mAP, mINP and TPR@FPR, from one distance
        matrix."""
        (q_pids, q_cams), (g_pids, g_cams) = self.data.ids["query"], self.data.ids["gallery"]
        dist = self.distances(features, rerank=rerank, metric=metric, aqe=aqe)
        scores = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams,
                               max_rank=self.config.eval.max_rank)
        return dataclasses.replace(scores, tpr_at_fpr=tpr_at_fpr(dist, q_pids, g_pids, q_cams,
                                                                 g_cams))

    def __call__(self, model) -> Scores:
        """``model``'s scores with the config's test-time options."""
        return self.score(self.features(model))

    def variants(self, model) -> list[tuple[str, Scores]]:
        """``[(name, scores), ...]`` over feature (after/before the BNNeck) x flip x
        average query expansion x re-ranking; features are extracted once per (feature,
        flip)."""
        rows = []
        for feature, flip in itertools.product(("after", "before"), (False, True)):
            features = self.features(model, feature=feature, flip=flip)
            for aqe in (False, True):  # expanded once for both re-ranking rows
                scored = self.expanded(features) if aqe else features
                for rerank in (False, True):
                    name = (f"{feature}{' +flip' if flip else ''}{' +aqe' if aqe else ''}"
                            f"{' +rerank' if rerank else ''}")
                    rows.append((name, self.score(scored, rerank=rerank, aqe=False)))
        return rows
