"""XLA settings our entry points make before JAX starts its backend.

XLA reads ``XLA_FLAGS`` once, when the first backend starts, and aborts the process on a flag
it does not know; so a flag is added only where the user has not set it and the installed
jaxlib carries it.
"""

from __future__ import annotations

import glob
import mmap
import os

# XLA:CPU's concurrency-optimised scheduler runs independent ops side by side and keeps more
# buffers alive to do so. Off, the ResNet-50 train step (batch 32, 384x128, 2 cores) ran at
# 5.2 instead of 4.9 images/s in 5.4 instead of 8.1 GiB, and the synthetic config's step 13 %
# faster (BENCHMARKS.md). It only exists as a flag: per-jit compile options do not reach it.
LEAN_CPU_SCHEDULE = "--xla_cpu_enable_concurrency_optimized_scheduler=false"


def jaxlib_knows(flag: str) -> bool:
    """Whether the installed jaxlib's libraries contain the flag's name (so XLA accepts it)."""
    import jaxlib

    name = flag.lstrip("-").split("=", 1)[0].encode()
    for path in glob.glob(os.path.join(os.path.dirname(jaxlib.__file__), "*.so")):
        try:
            with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                if m.find(name) >= 0:
                    return True
        except (OSError, ValueError):
            continue
    return False


def prefer_lean_cpu_schedule(environ=os.environ) -> bool:
    """Add ``LEAN_CPU_SCHEDULE`` to ``XLA_FLAGS`` unless already set either way or unknown.

    Harmless on GPUs (a CPU-only flag). Returns whether it was added.
    """
    current = environ.get("XLA_FLAGS", "")
    name = LEAN_CPU_SCHEDULE.split("=", 1)[0]
    if name in current or not jaxlib_knows(LEAN_CPU_SCHEDULE):
        return False
    environ["XLA_FLAGS"] = f"{current} {LEAN_CPU_SCHEDULE}".strip()
    return True
