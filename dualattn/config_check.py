"""Every setting checked before any work is spent, each problem named with its fix.

ml_collections already refuses unknown keys and values of the wrong type; this adds what
only the meaning of a key decides (a choice among names, a range, four stage sizes, one
weight per loss term) and what the devices decide (batches that divide over them). Every
entry point calls it before loading a model or a dataset, so a run never trains an epoch to
die at its evaluation; what the data decides (a test split with a scorable query) is
``dualattn.run.data.check_test_split``'s.
"""

from __future__ import annotations

import math
from numbers import Real

from data_pipeline.datasets import BUILDERS
from data_pipeline.sampler import SAMPLERS
from dualattn.errors import ConfigError
from dualattn.evaluation.metrics import DISTANCE_METRICS
from dualattn.models.cpu_conv import CHOICES as CPU_SCHEDULES
from dualattn.models.layers import CONV_INITS
from dualattn.models.reid import TEST_FEATURES
from dualattn.training.losses import TERMS
from dualattn.training.optim import SCHEDULES

CHOICES = {
    "dataset.name": tuple(sorted(BUILDERS)),
    "input.sampler": tuple(sorted(SAMPLERS)),
    "model.test_feature": TEST_FEATURES,
    "model.dtype": ("float32", "bfloat16"),
    "model.cpu_schedule": (*CPU_SCHEDULES, True, False),
    "model.last_stride": (1, 2),
    "model.conv_init": tuple(CONV_INITS),
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
    "optim.epochs": (1, math.inf, True), "optim.lr": (0, math.inf, False),
    "optim.weight_decay": (0, math.inf, True), "optim.warmup_epochs": (0, math.inf, True),
    "optim.alpha_lr_factor": (0, math.inf, False),
    "optim.warmup_factor": (0, 1, False), "optim.decay_factor": (0, math.inf, False),
    "eval.every_epochs": (1, math.inf, True), "eval.max_rank": (1, math.inf, True),
    "eval.rerank_k1": (1, math.inf, True), "eval.rerank_k2": (1, math.inf, True),
    "eval.rerank_lambda": (0, 1, True), "eval.ranked_list_queries": (0, math.inf, True),
    "eval.aqe_k": (1, math.inf, True), "eval.aqe_times": (1, math.inf, True),
    "eval.aqe_alpha": (0, math.inf, True),
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
    weights = _get(config, "loss.weights")
    if weights is not _MISSING:
        for name in sorted(set(weights) ^ set(TERMS)):
            found.append(f"loss.weights.{name}: " + (
                "not a loss term (the terms are " + ", ".join(TERMS) + ")" if name in weights
                else "missing: every term of dualattn.training.losses.TERMS needs a weight"))
        for name, weight in weights.items():
            if isinstance(weight, Real) and weight < 0:
                found.append(f"loss.weights.{name}={weight!r}: must be at least 0")
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
