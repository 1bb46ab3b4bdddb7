"""XLA settings our entry points make before JAX starts its backend.

XLA reads ``XLA_FLAGS`` once, when the first backend starts, and aborts the process on a flag
(or a flag value) it does not know; so a flag is added only where the user has not set it and
the installed jaxlib carries it. Both flags here only concern XLA:CPU; GPUs ignore them.
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

# Which ops XLA:CPU hands to YNNPACK: by default dots, convolutions and reductions. Its
# convolutions are slower than XLA's Eigen ones at ResNet-50's shapes (a 64-channel 3x3 at
# batch 32, 96x32: 33 vs 20 ms forward, 32 vs 20 ms input gradient; 512 channels: 68 vs 61 ms
# forward), so convolutions go to Eigen and dots and reductions stay with YNNPACK: the market
# train step 6 % faster (BENCHMARKS.md). Kernel gradients follow (``cpu_convolutions_in_ynnpack``).
YNN_FUSION_TYPE = "--xla_cpu_experimental_ynn_fusion_type"
EIGEN_CPU_CONVOLUTIONS = f"{YNN_FUSION_TYPE}=individual_dot,reduce"

CPU_FLAGS = (LEAN_CPU_SCHEDULE, EIGEN_CPU_CONVOLUTIONS)


def _name(flag: str) -> str:
    return flag.split("=", 1)[0]


def _required_strings(flag: str) -> list[bytes]:
    """What the jaxlib must contain to accept ``flag``: its name, and for the YNNPACK fusion
    types the enum name of each listed value (XLA aborts on an unknown one too)."""
    name, _, value = flag.lstrip("-").partition("=")
    needed = [name]
    if f"--{name}" == YNN_FUSION_TYPE:
        needed += [f"LIBRARY_FUSION_TYPE_{v.strip().upper()}" for v in value.split(",")]
    return [s.encode() for s in needed]


def jaxlib_knows(flag: str) -> bool:
    """Whether the installed jaxlib's libraries contain the flag's name (and enum values), so
    XLA accepts it."""
    import jaxlib

    missing = set(_required_strings(flag))
    for path in glob.glob(os.path.join(os.path.dirname(jaxlib.__file__), "*.so")):
        try:
            with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                missing = {s for s in missing if m.find(s) < 0}
        except (OSError, ValueError):
            continue
        if not missing:
            return True
    return False


def prefer_cpu_flags(environ=os.environ) -> list[str]:
    """Add each of ``CPU_FLAGS`` to ``XLA_FLAGS`` unless the user set that flag either way or
    the jaxlib lacks it. Returns the flags added."""
    added = []
    for flag in CPU_FLAGS:
        current = environ.get("XLA_FLAGS", "")
        if _name(flag) in current or not jaxlib_knows(flag):
            continue
        environ["XLA_FLAGS"] = f"{current} {flag}".strip()
        added.append(flag)
    return added


def cpu_convolutions_in_ynnpack(environ=os.environ) -> bool:
    """Whether XLA:CPU runs convolutions in YNNPACK under the current ``XLA_FLAGS``: yes
    unless a YNNPACK fusion-type flag leaves them out (XLA's default hands them over).

    The model's CPU kernel gradients depend on it: YNNPACK's own convolution kernel gradients
    are slow, so ``models.layers`` replaces them with matmuls; Eigen's are as fast as those.
    """
    value = None
    for token in environ.get("XLA_FLAGS", "").split():
        if _name(token) == YNN_FUSION_TYPE:
            value = token.partition("=")[2]
    return value is None or "convolution" in value.lower()
