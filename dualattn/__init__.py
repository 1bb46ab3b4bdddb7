"""dualattn: person re-identification in JAX/Flax (SE-ResNet-50 + spatial self-attention)."""

__version__ = "0.1.0"
