"""Identity-balanced (PK) batch sampling, stateless so that a resumed run sees the same batches.

Batch-hard triplet mining needs every batch to hold P identities with K images each. Two
samplers, chosen by ``config.input.sampler``:

- ``IdentitySampler`` ("identity", the default): BoT's, torchreid's and fast-reid's
  ``RandomIdentitySampler``. Every epoch, each identity's shuffled images are cut into chunks
  of K (an identity with fewer than K images is first drawn up to K with replacement; a
  remainder under K is left out), and batches take P distinct identities at random among
  those with chunks left, one chunk each. Identities thus appear in proportion to their image
  count and an epoch covers the training set.
- ``PKSampler`` ("uniform"): P distinct identities drawn uniformly at every step; each serves
  its images from its own shuffled cycle.

Everything is a function of ``(seed, epoch)``: no iterator state beyond the step number, which
makes resuming exact and lets every host compute the same global batch and read only its own
share of it.
"""

from __future__ import annotations

import functools

import numpy as np


class PKSampler:
    """Global batches of record indices for labels ``labels`` (one per training record); P
    identities drawn uniformly at every step. An epoch is ``len(labels) // (P * K)`` steps."""

    def __init__(self, labels, p: int, k: int, seed: int = 0):
        labels = np.asarray(labels)
        if labels.ndim != 1 or labels.size == 0:
            raise ValueError("labels must be a non-empty 1-D array, one per training image")
        if p < 1 or k < 1:
            raise ValueError(f"P and K must be >= 1, got P={p}, K={k}")
        self.ids, inverse = np.unique(labels, return_inverse=True)
        if p > len(self.ids):
            raise ValueError(f"P={p} identities per batch, but the training set has only "
                             f"{len(self.ids)}; lower P (config input.p)")
        order = np.argsort(inverse, kind="stable")
        bounds = np.cumsum(np.bincount(inverse))
        self.members = np.split(order, bounds[:-1])  # record indices of each identity
        self.p, self.k, self.seed = p, k, seed
        self.batch_size = p * k
        self.steps_per_epoch = max(1, labels.size // self.batch_size)

    @functools.lru_cache(maxsize=2)  # noqa: B019 - samplers live as long as their run
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


class IdentitySampler(PKSampler):
    """BoT's ``RandomIdentitySampler`` as a pure function of ``(seed, epoch)``.

    An epoch is ``(number of K-chunks) // P`` steps: BoT's estimate of its own length. Its
    draw ends when fewer than P identities have chunks left, usually a few steps short; the
    epoch's remaining steps are taken from the start of a fresh draw, so every epoch has the
    same length (which step-based schedules and exact resuming need)."""

    def __init__(self, labels, p: int, k: int, seed: int = 0):
        super().__init__(labels, p, k, seed)
        chunks = sum(max(len(m), k) // k for m in self.members)
        self.steps_per_epoch = max(1, chunks // p)

    def _draw(self, rng: np.random.Generator) -> list[np.ndarray]:
        """One pass of BoT's sampler: global batches until fewer than P identities remain."""
        chunks = []
        for m in self.members:
            idx = m if len(m) >= self.k else rng.choice(m, self.k, replace=True)
            idx = rng.permutation(idx)
            n = len(idx) // self.k
            chunks.append(list(idx[:n * self.k].reshape(n, self.k)))
        available = [i for i, c in enumerate(chunks) if c]
        batches = []
        while len(available) >= self.p:
            chosen = [available[j] for j in rng.choice(len(available), self.p, replace=False)]
            batches.append(np.concatenate([chunks[i].pop(0) for i in chosen]))
            available = [i for i in available if chunks[i]]
        return batches

    @functools.lru_cache(maxsize=2)  # noqa: B019 - samplers live as long as their run
    def epoch(self, epoch: int) -> np.ndarray:
        """(steps_per_epoch, P*K) record indices; K consecutive entries share an identity."""
        rng = np.random.default_rng([self.seed, epoch])
        batches = []
        while len(batches) < self.steps_per_epoch:
            batches += self._draw(rng)
        return np.stack(batches[:self.steps_per_epoch]).astype(np.int64)


SAMPLERS = {"identity": IdentitySampler, "uniform": PKSampler}


def make_sampler(kind: str, labels, p: int, k: int, seed: int = 0) -> PKSampler:
    """The sampler named by ``config.input.sampler``."""
    if kind not in SAMPLERS:
        raise ValueError(f"input.sampler must be one of {sorted(SAMPLERS)}, got {kind!r}")
    return SAMPLERS[kind](labels, p, k, seed=seed)


def process_share(global_batch: np.ndarray, process_index: int, process_count: int) -> np.ndarray:
    """This process's contiguous slice of a global batch; the slices tile it exactly."""
    size = len(global_batch)
    if size % process_count:
        raise ValueError(f"global batch {size} does not split over {process_count} processes")
    per = size // process_count
    return global_batch[process_index * per:(process_index + 1) * per]
