"""Top-10 search at Market-1501 size and over a 1,000,000-image gallery: ours (the gallery
streamed through the device, ``dualattn.serving.search.top_k``) beside NumPy's
``argpartition`` over the full distance matrix and faiss's exact flat index.

    python -m benchmarks.bench_search [--sizes market million] [--dim 2048]

Features are random 2048-D float32 (the network's test feature size), L2-normalised as
evaluation makes them: Market's 3368 queries x 15913 gallery images, and 100 queries x
1,000,000 gallery images (7.6 GiB of gallery features). Each method runs in a process of its
own, which makes the same features from the same seed; its peak resident memory beyond those
features is its working set (for ours, JAX's own runtime included). Time is the best of
``--repeats`` after one warm-up call (ours compiles in it). All three must find the same
neighbours up to float32 rounding (the float64 distances of what each found agree to 1e-6;
near-ties may swap places), and the script says for how many queries the lists are
identical; it fails loudly otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np

SIZES = {"market": (3368, 15913), "million": (100, 1_000_000)}
METHODS = ("ours", "numpy", "faiss")


def features(num_q: int, num_g: int, dim: int):
    rng = np.random.default_rng(0)

    def unit(n):  # made in blocks, so that no temporary the size of the gallery inflates RSS
        x = np.empty((n, dim), np.float32)
        for start in range(0, n, 4096):
            block = rng.standard_normal((min(4096, n - start), dim), dtype=np.float32)
            x[start:start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
        return x

    return unit(num_q), unit(num_g)


def numpy_top_k(query, gallery, k):
    """The full matrix of squared distances, ``argpartition`` then a sort of each row's k."""
    d2 = (np.einsum("ij,ij->i", query, query)[:, None]
          + np.einsum("ij,ij->i", gallery, gallery)[None, :] - 2 * query @ gallery.T)
    part = np.argpartition(d2, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(part, np.argsort(np.take_along_axis(d2, part, 1), 1), 1)
    return order


def rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def worker(method: str, size: str, dim: int, repeats: int, k: int = 10) -> dict:
    query, gallery = features(*SIZES[size], dim)
    base = rss()
    if method == "ours":
        from dualattn.serving.search import top_k

        def run():
            return top_k(query, gallery, k)[0]
    elif method == "faiss":
        from dualattn.serving.search import top_k

        def run():
            return top_k(query, gallery, k, backend="faiss")[0]
    else:
        def run():
            return numpy_top_k(query, gallery, k)
    found = run()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        found = run()
        seconds.append(time.perf_counter() - start)
    # The float64 distances of what was found, to compare methods up to float32 rounding.
    exact = np.stack([np.linalg.norm(gallery[row].astype(np.float64) - q.astype(np.float64),
                                     axis=1) for q, row in zip(query, found, strict=True)])
    return {"seconds": min(seconds), "working_set": rss() - base,
            "gallery_bytes": gallery.nbytes, "found": found.tolist(), "exact": exact.tolist()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(*args.worker, args.dim, args.repeats)))
        return
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"numpy {np.__version__}; top-10, {args.dim}-D float32 features\n")
    print(f"{'size':<9}{'queries x gallery':>22}{'gallery':>10}   "
          + "".join(f"{m + ' s':>10}{m + ' MiB':>12}" for m in METHODS))
    for size in args.sizes:
        results = {}
        for method in METHODS:
            proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_search", "--worker",
                                   method, size, "--dim", str(args.dim), "--repeats",
                                   str(args.repeats)], capture_output=True, text=True)
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode or not line:
                raise SystemExit(f"error: {method} at {size} size failed:\n{proc.stderr[-2000:]}")
            results[method] = json.loads(line[0][len("RESULT "):])
        found = {m: np.array(r.pop("found")) for m, r in results.items()}
        exact = {m: np.sort(np.array(r.pop("exact")), axis=1) for m, r in results.items()}
        for m in METHODS[1:]:
            # Near-ties may swap places (each method rounds its float32 distances its own
            # way), but the distances found must be the same up to that rounding.
            if not np.allclose(exact[m], exact["ours"], rtol=1e-6, atol=0):
                raise SystemExit(f"error: {m} found other neighbours than ours at {size} size")
        same = {m: int((found[m] == found["ours"]).all(axis=1).sum()) for m in METHODS[1:]}
        num_q, num_g = SIZES[size]
        gib = results["ours"]["gallery_bytes"] / 2**30
        print(f"{size:<9}{f'{num_q:,} x {num_g:,}':>22}{gib:>8.2f} G   "
              + "".join(f"{r['seconds']:>10.2f}{r['working_set'] / 2**20:>12,.0f}"
                        for r in results.values())
              + "   identical lists: " + ", ".join(f"{m} {n} of {num_q}"
                                                   for m, n in same.items()), flush=True)


if __name__ == "__main__":
    main()
