"""The network's input normalisation, in one place: uint8 RGB crops become ImageNet-normalised
float32, as torchvision's ImageNet weights expect. Training augmentation, the evaluator, the
served files and the PyTorch twin's ONNX wrapper all normalise with these values."""

from __future__ import annotations

import jax
import jax.numpy as jnp

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(images: jax.Array, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> jax.Array:
    """uint8 (or 0-255 float) NHWC -> f32 ``(x / 255 - mean) / std``."""
    x = images.astype(jnp.float32) / 255.0
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
