"""Shared test settings: a tiny network that compiles in seconds on two CPU cores."""

import jax
import pytest

# Parity-style checks compare against NumPy/PyTorch in f32; keep XLA's matmuls exact.
jax.config.update("jax_default_matmul_precision", "highest")

# One block per stage, 8 base channels: same code paths as ResNet-50, 256 output channels.
TINY_MODEL = dict(stage_sizes=(1, 1, 1, 1), width=8)


@pytest.fixture
def tiny_model_kwargs():
    return dict(TINY_MODEL)
