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


@pytest.fixture(scope="session")
def market_dir(tmp_path_factory):
    """A small generated dataset in the Market-1501 layout (6 train ids, 5 test ids)."""
    from data_pipeline import synthetic

    out = tmp_path_factory.mktemp("market")
    synthetic.generate(out, train_ids=6, test_ids=5, cameras=3, distractors=4, junk=3)
    return out


@pytest.fixture(scope="session")
def market_sources(market_dir, tmp_path_factory):
    """That dataset prepared by the Market builder: split -> random-access source."""
    import warnings

    from data_pipeline.datasets import data_sources, prepare

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # counts differ from the published Market-1501
        builder = prepare("market1501", market_dir, tmp_path_factory.mktemp("tfds"),
                          verbose=False)
    return data_sources(builder)
