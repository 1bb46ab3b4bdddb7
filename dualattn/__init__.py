"""dualattn: person re-identification in JAX/Flax (SE-ResNet-50 + spatial self-attention).

The top level holds the commands (``python -m dualattn.train``, ``evaluate``, ``embed``,
``export``, ``convert``, ``compare``) and what they share (``cli``, ``config_check``,
``errors``); the library is in the stage packages ``models``, ``weights``, ``run``,
``training``, ``evaluation``, ``serving`` and ``interop`` (the only one that needs torch).
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    """``dualattn.FeatureExtractor``, imported on first use: ``import dualattn`` stays light,
    and the XLA:CPU flags every command sets are set first (they count only before JAX
    starts its backend)."""
    if name == "FeatureExtractor":
        from dualattn.run import xla_flags
        xla_flags.prefer_cpu_flags()
        from dualattn.serving.extractor import FeatureExtractor
        return FeatureExtractor
    raise AttributeError(f"module 'dualattn' has no attribute {name!r}")
