"""TPR at FPR 1e-4 / 1e-3 / 1e-2 at Market-1501 and MSMT17 size: our two-pass bucket search
beside sorting every negative pair.

    python -m benchmarks.bench_verification [--size market|msmt17|both] [--repeats 3]

The distance matrix is ``benchmarks.bench_evaluate``'s synthetic one, shaped like the test
set (Market: 3368 x 15913, 5.4e7 pairs; MSMT17: 11659 x 82161, 9.6e8 pairs). The reference
gathers every negative pair's distance, sorts them all, reads the ``floor(f*N)``-th and
counts the positives closer: the definition, vectorised the obvious way. Both must agree
exactly; the script fails loudly if they do not. Peak memory is what each allocates beyond
the distance matrix (tracemalloc, which NumPy reports to).
"""

from __future__ import annotations

import argparse
import os
import platform
import tracemalloc

import numpy as np

from benchmarks.bench_evaluate import best_of, market_like_problem
from dualattn.evaluation.verification import FPRS, tpr_at_fpr

SIZES = {"market": (3368, 15913), "msmt17": (11659, 82161)}


def sorted_negatives(distmat, q_pids, g_pids, q_camids, g_camids, fprs=FPRS) -> dict:
    """Every negative sorted: the definition, vectorised the obvious way."""
    match = q_pids[:, None] == g_pids[None, :]
    positives = distmat[match & (q_camids[:, None] != g_camids[None, :])]
    negatives = np.sort(distmat[~match])
    return {f: float((positives < negatives[int(np.floor(f * negatives.size))]).sum()
                     / positives.size) for f in fprs}


def measured(fn, repeats):
    tracemalloc.start()
    seconds, result = best_of(fn, repeats)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return seconds, peak, result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=[*SIZES, "both"], default="both")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"numpy {np.__version__}\n")
    print(f"{'size':<8}{'pairs':>12}{'ours s':>9}{'ours MiB':>10}{'sort s':>9}{'sort MiB':>10}"
          f"{'speed-up':>10}   TPR@FPR 1e-4 / 1e-3 / 1e-2")
    for size in SIZES if args.size == "both" else [args.size]:
        problem = market_like_problem(*SIZES[size])
        ours_s, ours_peak, ours = measured(lambda p=problem: tpr_at_fpr(*p), args.repeats)
        ref_s, ref_peak, ref = measured(lambda p=problem: sorted_negatives(*p), 1)
        if ours != ref:
            raise SystemExit(f"error: the two disagree at {size} size: {ours} vs {ref}")
        rates = " / ".join(f"{100 * ours[f]:.2f}%" for f in FPRS)
        print(f"{size:<8}{problem[0].size:>12,}{ours_s:>9.2f}{ours_peak / 2**20:>10.0f}"
              f"{ref_s:>9.2f}{ref_peak / 2**20:>10.0f}{ref_s / ours_s:>9.1f}x   {rates}",
              flush=True)
        del problem


if __name__ == "__main__":
    main()
