"""k-reciprocal re-ranking: time and peak memory at Market and MSMT17 sizes.

    python -m benchmarks.bench_rerank [--sizes small market msmt17] [--dim 2048]

Features are synthetic but shaped like a ReID test set: one centre per identity (Market: 750
test identities; MSMT17: 3,060), images scattered around it, L2-normalised, 2048-D. Each size
runs in its own process so that its peak resident memory is its own. ``small`` also runs
the dense transcription of the published algorithm (``re_ranking_reference``), the baseline,
and checks both agree; at Market size that baseline would need (q+g)^2 float64 matrices of
3 GB each and hours of per-row loops, and at MSMT17 size 70 GB each.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

import numpy as np

SIZES = {  # queries, gallery, identities
    "small": (400, 1600, 100),
    "market": (3368, 15913, 750),
    "msmt17": (11659, 82161, 3060),
}


def labelled_features(q: int, g: int, ids: int, dim: int, seed: int = 0):
    """``(query features, gallery features, query ids, gallery ids)``: unit-length features
    scattered around one centre per identity."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((ids, dim), dtype=np.float32)
    out, labels = [], []
    for n in (q, g):
        pids = rng.integers(0, ids, n)
        f = centres[pids] + 0.8 * rng.standard_normal((n, dim), dtype=np.float32)
        out.append(f / np.linalg.norm(f, axis=1, keepdims=True))
        labels.append(pids)
    return (*out, *labels)


def features(q: int, g: int, ids: int, dim: int, seed: int = 0):
    return labelled_features(q, g, ids, dim, seed)[:2]


def worker(size: str, dim: int) -> dict:
    from dualattn.evaluation.metrics import compute_distance_matrix
    from dualattn.evaluation.rerank import re_ranking_features, re_ranking_reference

    q, g, ids = SIZES[size]
    qf, gf = features(q, g, ids, dim)
    start = time.perf_counter()
    ours = re_ranking_features(qf, gf)
    seconds = time.perf_counter() - start
    result = {"size": size, "queries": q, "gallery": g, "seconds": seconds,
              "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    if size == "small":
        dists = [np.asarray(compute_distance_matrix(a, b, "euclidean"))
                 for a, b in ((qf, gf), (qf, qf), (gf, gf))]
        start = time.perf_counter()
        reference = re_ranking_reference(*dists)
        result["reference_seconds"] = time.perf_counter() - start
        result["max_abs_difference"] = float(np.abs(ours - reference).max())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["small", "market"], choices=SIZES)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, args.dim)))
        return
    import jax
    print(f"{platform.processor() or platform.machine()}, JAX {jax.__version__} on "
          f"{jax.devices()[0].platform}; k1=20, k2=6, lambda=0.3; {args.dim}-D features")
    print(f"{'size':<8}{'queries':>9}{'gallery':>9}{'ours s':>10}{'peak GiB':>10}"
          f"{'reference s':>13}{'max |diff|':>12}")
    for size in args.sizes:
        proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_rerank", "--worker",
                               size, "--dim", str(args.dim)], capture_output=True, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode or not lines:
            sys.exit(f"{size} failed:\n{proc.stderr[-3000:]}")
        r = json.loads(lines[-1][len("RESULT "):])
        ref = f"{r['reference_seconds']:.1f}" if "reference_seconds" in r else "-"
        diff = f"{r['max_abs_difference']:.1e}" if "max_abs_difference" in r else "-"
        print(f"{size:<8}{r['queries']:>9}{r['gallery']:>9}{r['seconds']:>10.1f}"
              f"{r['peak_gib']:>10.2f}{ref:>13}{diff:>12}", flush=True)


if __name__ == "__main__":
    main()
