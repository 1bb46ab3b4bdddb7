"""Shared test settings: the commands' XLA flags, a compilation cache shared with the
subprocesses the tests start, and a small generated dataset."""

import os
import tempfile

from dualattn.run import xla_flags

# The same XLA flags as every entry point, set before JAX starts its backend: the tests run
# the graphs the commands run. Subprocesses inherit them (and the cache below) through the
# environment.
xla_flags.prefer_cpu_flags()
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "dualattn-test-jax-cache"))

import jax  # noqa: E402
import pytest  # noqa: E402

from tests.helpers import TINY_MODEL  # noqa: E402

# Parity-style checks compare against NumPy/PyTorch in f32; keep XLA's matmuls exact.
jax.config.update("jax_default_matmul_precision", "highest")


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


@pytest.fixture(scope="session")
def data_paths(tmp_path_factory):
    """(raw folder, prepared folder) of the tiny config's dataset, generated on first use."""
    root = tmp_path_factory.mktemp("tiny")
    return root / "raw", root / "tfds"


@pytest.fixture(scope="session")
def trained_run(data_paths, tmp_path_factory):
    """(config, workdir) of a finished two-epoch tiny run."""
    import warnings

    from dualattn.training.loop import train_and_evaluate
    from tests.helpers import tiny_config

    c, workdir = tiny_config(data_paths, epochs=2), tmp_path_factory.mktemp("run")
    c.eval.baselines = c.eval.report = True  # the baselines and report.html, tested on it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # counts differ from the published Market-1501
        train_and_evaluate(c, workdir)
    return c, workdir
