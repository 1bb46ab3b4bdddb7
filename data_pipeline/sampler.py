"""Identity-balanced (PK) batch sampling, stateless so that a resumed run sees the same batches.

Batch-hard triplet mining needs every batch to hold P identities with K images each. Each
batch draws P distinct identities uniformly; each identity serves its images from its own
shuffled cycle, so all of an identity's images are used before any repeats, and an identity
with fewer than K images repeats some within the batch (sampling with replacement). An epoch
is ``len(train) // (P * K)`` batches, as with any sampler of that batch size.

Everything is a function of ``(seed, epoch)``: no iterator state beyond the step number, which
makes resuming exact and lets every host compute the same global batch and read only its own
share of it.
"""

from __future__ import annotations

import functools

import numpy as np


class PKSampler:
    """Global batches of record indices for labels ``labels`` (one per training record)."""

    def __init__(self, labels, p: int, k: int, seed: int = 0):
        labels = np.asarray(labels)
        if labels.ndim != 1 or labels.size == 0:
            raise ValueError("labels must be a non-empty 1-D array, one per training image")
        if p < 1 or k < 1:
            raise ValueError(f"P and K must be >= 1, got P={p}, K={k}")
        self.ids, inverse = np.unique(labels, return_inverse=True)
        if p > len(self.ids):
            raise ValueError(f"P={p} identities per batch, but the training set has only "
                             f"{len(self.ids)}; lower P (config data.p)")
        order = np.argsort(inverse, kind="stable")
        bounds = np.cumsum(np.bincount(inverse))
        self.members = np.split(order, bounds[:-1])  # record indices of each identity
        self.p, self.k, self.seed = p, k, seed
        self.batch_size = p * k
        self.steps_per_epoch = max(1, labels.size // self.batch_size)

    @functools.lru_cache(maxsize=2)
    def epoch(self, epoch: int) -> np.ndarray:
        """(steps_per_epoch, P*K) record indices; K consecutive entries share an identity."""
        rng = np.random.default_rng([self.seed, epoch])
        cycles = [rng.permutation(m) for m in self.members]
        cursor = np.zeros(len(self.members), dtype=np.int64)
        out = np.empty((self.steps_per_epoch, self.batch_size), dtype=np.int64)
        for step in range(self.steps_per_epoch):
            chosen = rng.choice(len(self.members), self.p, replace=False)
            for slot, ident in enumerate(chosen):
                cycle = cycles[ident]
                take = (cursor[ident] + np.arange(self.k)) % len(cycle)
                cursor[ident] += self.k
                out[step, slot * self.k:(slot + 1) * self.k] = cycle[take]
        return out

    def batch(self, step: int) -> np.ndarray:
        """The global batch at training step ``step`` (counting across epochs)."""
        epoch, index = divmod(step, self.steps_per_epoch)
        return self.epoch(epoch)[index]


def process_share(global_batch: np.ndarray, process_index: int, process_count: int) -> np.ndarray:
    """This process's contiguous slice of a global batch; the slices tile it exactly."""
    size = len(global_batch)
    if size % process_count:
        raise ValueError(f"global batch {size} does not split over {process_count} processes")
    per = size // process_count
    return global_batch[process_index * per:(process_index + 1) * per]
