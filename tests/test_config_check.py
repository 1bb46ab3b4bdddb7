"""Settings that cannot work are refused before any work, all of them in one line."""

import os
import subprocess
import sys

import numpy as np
import pytest

from configs import common, duke, market, msmt17, synthetic, tiny
from dualattn.config_check import check_config, problems
from dualattn.errors import ConfigError
from dualattn.run.data import check_test_split
from tests.helpers import assert_one_error_line


@pytest.mark.parametrize("module", [common, tiny, synthetic, market, duke, msmt17])
def test_every_shipped_config_passes(module):
    assert problems(module.get_config()) == []


def test_every_problem_is_named_with_what_would_work():
    c = common.get_config()
    c.eval.metric, c.model.test_feature, c.model.dtype = "manhattan", "middle", "float16"
    c.input.k, c.optim.lr, c.model.stage_sizes = 1, 0.0, (3, 4, 6)
    c.augment.erase_prob, c.model.last_stride = 1.5, 3
    found = problems(c)
    assert found == [
        "model.test_feature='middle': one of 'after', 'before'",
        "model.dtype='float16': one of 'float32', 'bfloat16'",
        "model.last_stride=3: one of 1, 2",
        "eval.metric='manhattan': one of 'euclidean', 'sqeuclidean', 'cosine'",
        "input.k=1: must be at least 2 (batch-hard triplet mining needs at least 2 images per "
        "identity)",
        "augment.erase_prob=1.5: must be in [0, 1]",
        "optim.lr=0.0: must be above 0",
        "model.stage_sizes=(3, 4, 6): four positive block counts, one per stage, e.g. "
        "(3, 4, 6, 3) for ResNet-50 or (1, 1, 1, 1)"]
    with pytest.raises(ConfigError, match=r"^8 setting\(s\) cannot work: .*configs/common\.py"):
        check_config(c)


def test_batches_must_divide_over_the_devices():
    c = tiny.get_config()  # P4 x K2 = 8, eval batch 16
    check_config(c, devices=4)
    with pytest.raises(ConfigError) as e:
        check_config(c, devices=3)
    assert "input.p x input.k = 8: the batch must divide over the 3 devices" in str(e.value)
    assert "input.eval_batch_size=16: must divide over the 3 devices, e.g. 15" in str(e.value)


def test_a_test_split_without_a_scorable_query_is_refused():
    ids = {"query": (np.array([1, 2, 3]), np.array([0, 0, 1])),
           "gallery": (np.array([1, 2, 3, 3]), np.array([1, 0, 1, 1]))}
    assert check_test_split(ids, "root") == 1  # only pid 1 has another camera's image
    ids["gallery"] = (np.array([2, 3, 4]), np.array([0, 1, 0]))
    with pytest.raises(ConfigError, match="none of the 3 query images of root has a valid"):
        check_test_split(ids, "root")


def test_the_trainer_refuses_before_it_creates_anything(tmp_path):
    workdir = tmp_path / "run"
    base = [sys.executable, "-m", "dualattn.train", "--config", "configs/tiny.py",
            "--workdir", str(workdir)]
    proc = subprocess.run(base + ["--config.eval.metric=manhattan",
                                  "--config.model.test_feature=middle",
                                  "--config.model.stage_sizes=3"],
                          capture_output=True, text=True, timeout=120)
    assert_one_error_line(proc, "3 setting(s) cannot work: model.test_feature='middle'")
    assert "model.stage_sizes=(3,)" in proc.stderr and "eval.metric='manhattan'" in proc.stderr
    three = dict(os.environ, XLA_FLAGS=os.environ.get("XLA_FLAGS", "")
                 + " --xla_force_host_platform_device_count=3")
    proc = subprocess.run(base + ["--config.input.p=3"], capture_output=True, text=True,
                          timeout=120, env=three)
    assert_one_error_line(proc, "input.eval_batch_size=16: must divide over the 3 devices")
    assert not workdir.exists()
