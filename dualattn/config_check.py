"""Every setting checked before any work is spent, each problem named with its fix.

ml_collections already refuses unknown keys and values of the wrong type; this adds what
only the meaning of a key decides (a choice among names, a range, four stage sizes), what the
devices decide (batches that divide over them) and what the data decides (a test split with
at least one scorable query). Every entry point calls it before loading a model or a dataset,
so a run never trains an epoch to die at its evaluation.
"""

from __future__ import annotations

import math
from numbers import Real

import numpy as np

from data_pipeline.datasets import BUILDERS
from data_pipeline.sampler import SAMPLERS
from dualattn.cpu_schedule import CHOICES as CPU_SCHEDULES
from dualattn.errors import ConfigError
from dualattn.metrics import DISTANCE_METRICS
from dualattn.models.reid import TEST_FEATURES
from dualattn.optim import SCHEDULES

CHOICES = {
    "dataset.name": tuple(sorted(BUILDERS)),
    "input.sampler": tuple(sorted(SAMPLERS)),
    "model.test_feature": TEST_FEATURES,
    "model.dtype": ("float32", "bfloat16"),
    "model.cpu_schedule": (*CPU_SCHEDULES, True, False),
    "model.last_stride": (1, 2),
    "eval.metric": DISTANCE_METRICS,
    "optim.schedule": SCHEDULES,
}

# key -> (lowest, highest, whether the lowest is allowed)
RANGES = {
    "input.height": (1, math.inf, True), "input.width": (1, math.inf, True),
    "input.p": (2, math.inf, True), "input.k": (2, math.inf, True),
    "input.num_workers": (0, math.inf, True), "input.eval_batch_size": (1, math.inf, True),
    "augment.translate": (0, math.inf, True), "augment.rotate_degrees": (0, 180, True),
    "augment.erase_prob": (0, 1, True),
    "model.width": (1, math.inf, True), "model.se_reduction": (1, math.inf, True),
    "model.sa_reduction": (1, math.inf, True),
    "loss.label_smoothing": (0, 1, True), "loss.margin": (0, math.inf, True),
    "loss.ce_weight": (0, math.inf, True), "loss.triplet_weight": (0, math.inf, True),
    "optim.epochs": (1, math.inf, True), "optim.lr": (0, math.inf, False),
    "optim.weight_decay": (0, math.inf, True), "optim.warmup_epochs": (0, math.inf, True),
    "optim.warmup_factor": (0, 1, False), "optim.decay_factor": (0, math.inf, False),
    "eval.every_epochs": (1, math.inf, True), "eval.max_rank": (1, math.inf, True),
    "eval.rerank_k1": (1, math.inf, True), "eval.rerank_k2": (1, math.inf, True),
    "eval.rerank_lambda": (0, 1, True), "eval.ranked_list_queries": (0, math.inf, True),
    "log_every_steps": (1, math.inf, True), "checkpoint_every_epochs": (1, math.inf, True),
}

WHY = {
    "input.p": "batch-hard triplet mining needs at least 2 identities per batch",
    "input.k": "batch-hard triplet mining needs at least 2 images per identity",
}


def _get(config, key: str):
    node = config
    for part in key.split("."):
        if part not in node:
            return _MISSING
        node = node[part]
    return node


_MISSING = object()


def problems(config) -> list[str]:
    """Every setting of ``config`` that cannot work, as ``key=value: why`` lines."""
    found = []
    for key, allowed in CHOICES.items():
        value = _get(config, key)
        if value is not _MISSING and not any(value == a and type(value) is type(a)
                                             for a in allowed):
            names = ", ".join(repr(a) for a in allowed if not isinstance(a, bool))
            found.append(f"{key}={value!r}: one of {names}")
    for key, (low, high, low_ok) in RANGES.items():
        value = _get(config, key)
        if value is _MISSING or not isinstance(value, Real):
            continue
        if value < low or (value == low and not low_ok) or value > high:
            span = (f"{'at least' if low_ok else 'above'} {low}" if high == math.inf
                    else f"in {'[' if low_ok else '('}{low}, {high}]")
            found.append(f"{key}={value!r}: must be {span}"
                         + (f" ({WHY[key]})" if key in WHY else ""))
    stages = _get(config, "model.stage_sizes")
    if stages is not _MISSING and not (
            isinstance(stages, (tuple, list)) and len(stages) == 4
            and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in stages)):
        found.append(f"model.stage_sizes={stages!r}: four positive block counts, one per "
                     "stage, e.g. (3, 4, 6, 3) for ResNet-50 or (1, 1, 1, 1)")
    decays = _get(config, "optim.decay_epochs")
    if decays is not _MISSING and not (
            isinstance(decays, (tuple, list))
            and all(isinstance(e, int) and e >= 0 for e in decays)):
        found.append(f"optim.decay_epochs={decays!r}: a tuple of epochs, e.g. (40, 70)")
    return found


def check_config(config, devices: int | None = None) -> None:
    """Raise one ``ConfigError`` naming every setting that cannot work; with ``devices``,
    also the batches that do not divide over that many devices."""
    found = problems(config)
    if devices is not None:
        batch = config.input.p * config.input.k
        if batch % devices:
            found.append(f"input.p x input.k = {batch}: the batch must divide over the "
                         f"{devices} devices; change input.p or input.k")
        if config.input.eval_batch_size % devices:
            found.append(f"input.eval_batch_size={config.input.eval_batch_size}: must divide "
                         f"over the {devices} devices, e.g. "
                         f"{devices * max(1, config.input.eval_batch_size // devices)}")
    if found:
        raise ConfigError(f"{len(found)} setting(s) cannot work: " + "; ".join(found)
                          + " (every key is described in configs/common.py)")


def check_test_split(ids: dict[str, tuple[np.ndarray, np.ndarray]], root: str) -> int:
    """How many queries have a valid match (an image of their identity in the gallery from
    another camera); none is an error, since nothing could be scored."""
    (q_pids, q_cams), (g_pids, g_cams) = ids["query"], ids["gallery"]
    by_id: dict[int, set] = {}
    for pid, cam in zip(g_pids.tolist(), g_cams.tolist()):
        by_id.setdefault(pid, set()).add(cam)
    valid = sum(bool(by_id.get(pid, set()) - {cam})
                for pid, cam in zip(q_pids.tolist(), q_cams.tolist()))
    if not valid:
        raise ConfigError(f"none of the {len(q_pids)} query images of {root} has a valid "
                          "match (an image of its identity in the gallery from another "
                          "camera), so nothing could be scored; check dataset.root and the "
                          "query/gallery folders")
    return valid
