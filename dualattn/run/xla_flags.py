"""XLA:CPU settings the entry points make before JAX starts its backend.

XLA reads ``XLA_FLAGS`` once, when the first backend starts, and aborts the process on a flag
or flag value it does not know. So the flags here are added only for the jaxlib releases they
were checked against (``CHECKED_JAXLIB``: each release's libraries were searched for the flag
and value names when the range was set), and never where the user set the flag either way.
Both flags only concern XLA:CPU; on GPUs and TPUs they change nothing.
"""

from __future__ import annotations

import os
from importlib import metadata

# XLA:CPU's concurrency-optimised scheduler runs independent ops side by side and keeps more
# buffers alive to do so. Off, the ResNet-50 train step at 384x128 needs about 3 GiB less
# memory and runs faster on 2 cores (BENCHMARKS.md). Per-jit compile options do not reach it.
LEAN_CPU_SCHEDULE = "--xla_cpu_enable_concurrency_optimized_scheduler=false"

# Which ops XLA:CPU hands to YNNPACK (by default dots, convolutions and reductions). Its
# convolutions and their gradients are slower than XLA's Eigen ones at ResNet-50's shapes, so
# convolutions go to Eigen; dots and reductions stay with YNNPACK (BENCHMARKS.md).
EIGEN_CPU_CONVOLUTIONS = "--xla_cpu_experimental_ynn_fusion_type=individual_dot,reduce"

CPU_FLAGS = (LEAN_CPU_SCHEDULE, EIGEN_CPU_CONVOLUTIONS)

# jaxlib releases known to accept every flag of CPU_FLAGS: [first, past-the-last) as
# (major, minor). Checked: 0.10.0 and 0.10.2. A newer release gets no flags until checked.
CHECKED_JAXLIB = ((0, 10), (0, 11))


def _name(flag: str) -> str:
    return flag.split("=", 1)[0]


def jaxlib_version() -> tuple[int, int]:
    """(major, minor) of the installed jaxlib, read from its package metadata."""
    major, minor, *_ = metadata.version("jaxlib").split(".")
    return int(major), int(minor)


def cpu_flags_supported(version: tuple[int, int] | None = None) -> bool:
    """Whether the installed (or given) jaxlib release is one ``CPU_FLAGS`` were checked on."""
    first, past_last = CHECKED_JAXLIB
    return first <= (jaxlib_version() if version is None else version) < past_last


def prefer_cpu_flags(environ=os.environ, version: tuple[int, int] | None = None) -> list[str]:
    """Add each of ``CPU_FLAGS`` to ``XLA_FLAGS`` unless the user set that flag either way or
    the jaxlib release was not checked. Returns the flags added. Call before JAX's backend
    starts: every entry point, the benchmarks and the tests."""
    if not cpu_flags_supported(version):
        return []
    added = []
    for flag in CPU_FLAGS:
        current = environ.get("XLA_FLAGS", "")
        if _name(flag) in current:
            continue
        environ["XLA_FLAGS"] = f"{current} {flag}".strip()
        added.append(flag)
    return added
