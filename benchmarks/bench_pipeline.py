"""Input pipeline throughput at 384x128: CPU decode + resize, grain workers, device augmentation.

    python -m benchmarks.bench_pipeline [--workers 2] [--steps 60]

Reads a generated dataset in the Market-1501 layout (128x64 JPEG crops, as Market's are)
through the real builder, sampler and grain pipeline. Prints images/s for: decode + resize in
one process (the per-core figure), the grain pipeline with worker processes after warm-up, and
the jitted on-device augmentation of uint8 batches (flip, translate, rotate, erase, normalise).
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import tempfile
import time
import warnings

import jax
import numpy as np

from data_pipeline import synthetic
from data_pipeline.datasets import data_sources, prepare, read_columns
from data_pipeline.input_pipeline import decode_resize, train_dataset
from data_pipeline.sampler import PKSampler
from dualattn.training.augment import AugmentConfig, augment

IMAGE_SIZE = (384, 128)


def timed_batches(iterator, warmup: int, count: int) -> float:
    """Seconds for ``count`` batches after ``warmup`` batches (worker start-up excluded)."""
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(count):
        next(iterator)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; jax {jax.__version__} on "
          f"{jax.devices()[0].device_kind}")

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        synthetic.generate(f"{tmp}/raw", train_ids=100, test_ids=4, seed=0)
        sources = data_sources(prepare("market1501", f"{tmp}/raw", f"{tmp}/tfds", verbose=False))
        train = sources["train"]
        (labels,) = read_columns(train, "label")
        sampler = PKSampler(labels, p=args.batch // 4, k=4, seed=0)
        steps = 5 + args.steps  # 5 warm-up batches, then the timed ones

        jpegs = [train[i]["image"] for i in range(min(len(train), 512))]
        start = time.perf_counter()
        for jpeg in jpegs:
            decode_resize(jpeg, *IMAGE_SIZE)
        decode_rate = len(jpegs) / (time.perf_counter() - start)

        rows = [("decode + resize, 1 process", decode_rate, decode_rate)]
        for workers in sorted({0, args.workers}):
            it = iter(train_dataset(train, sampler, image_size=IMAGE_SIZE, start_step=0,
                                    num_steps=steps, num_workers=workers))
            seconds = timed_batches(it, warmup=5, count=args.steps)
            rate = args.steps * args.batch / seconds
            rows.append((f"grain pipeline, {workers} workers", rate, rate / max(workers, 1)))

    images = np.random.default_rng(0).integers(0, 256, (args.batch, *IMAGE_SIZE, 3), np.uint8)
    images = jax.device_put(images)
    aug = jax.jit(functools.partial(augment, cfg=AugmentConfig()))
    aug(jax.random.key(0), images).block_until_ready()
    reps = 20
    start = time.perf_counter()
    for i in range(reps):
        out = aug(jax.random.key(i), images)
    out.block_until_ready()
    aug_rate = reps * args.batch / (time.perf_counter() - start)
    rows.append((f"augmentation on {jax.devices()[0].platform}", aug_rate, None))

    print(f"\n{f'stage (384x128, batch {args.batch})':<34}{'images/s':>10}{'per core':>10}")
    for name, rate, per_core in rows:
        per = f"{per_core:>10.0f}" if per_core is not None else f"{'':>10}"
        print(f"{name:<34}{rate:>10.0f}{per}")


if __name__ == "__main__":
    main()
