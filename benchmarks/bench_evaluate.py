"""Evaluator speed at Market-1501 size: our vectorised evaluator beside a per-query loop.

    python -m benchmarks.bench_evaluate [--queries 3368 --gallery 15913 --repeats 3]

The distance matrix is synthetic but shaped like Market's test set: 750 identities over 6
cameras, pid-0 distractors, junk same-camera matches, and true matches drawn closer than the
rest so that ranks and AP take realistic values. Both evaluators get the same matrix and must
agree on every figure; the script fails loudly if they do not.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from dualattn.evaluation.metrics import evaluate_rank, evaluate_rank_reference


def market_like_problem(num_q: int, num_g: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    num_ids, num_cams = 750, 6
    g_pids = rng.integers(1, num_ids + 1, num_g)
    g_pids[rng.random(num_g) < 0.1] = 0  # distractors
    q_pids = rng.integers(1, num_ids + 1, num_q)
    q_cams, g_cams = rng.integers(0, num_cams, num_q), rng.integers(0, num_cams, num_g)
    distmat = rng.random((num_q, num_g), dtype=np.float32)
    same = q_pids[:, None] == g_pids[None, :]
    distmat[same] *= 0.002  # matches tend to rank early, as with a trained model
    return distmat, q_pids, g_pids, q_cams, g_cams


def best_of(fn, repeats: int) -> tuple[float, dict]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=3368)
    parser.add_argument("--gallery", type=int, default=15913)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    problem = market_like_problem(args.queries, args.gallery)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"numpy {np.__version__}")
    print(f"distance matrix: {args.queries} x {args.gallery} float32 "
          f"({problem[0].nbytes / 2**20:.0f} MiB)\n")

    t_fast, fast = best_of(lambda: evaluate_rank(*problem), args.repeats)
    t_fast1, _ = best_of(lambda: evaluate_rank(*problem, num_threads=1), args.repeats)
    t_ref, ref = best_of(lambda: evaluate_rank_reference(*problem), 1)

    if not (np.array_equal(fast.cmc, ref.cmc) and np.isclose(fast.mAP, ref.mAP)
            and np.isclose(fast.mINP, ref.mINP)):
        raise SystemExit("MISMATCH between evaluate_rank and evaluate_rank_reference")

    print(f"{'evaluator':<34}{'seconds':>9}{'speed-up':>10}")
    rows = [(f"evaluate_rank ({os.cpu_count()} threads)", t_fast),
            ("evaluate_rank (1 thread)", t_fast1),
            ("per-query loop (reference)", t_ref)]
    for name, t in rows:
        print(f"{name:<34}{t:>9.3f}{t_ref / t:>9.1f}x")
    print(f"\nresults agree: R1 {fast.rank(1):.4f}  R5 {fast.rank(5):.4f}  "
          f"mAP {fast.mAP:.4f}  mINP {fast.mINP:.4f}  ({fast.valid_queries} valid queries)")


if __name__ == "__main__":
    main()
