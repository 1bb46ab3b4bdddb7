"""What several test modules share: tiny configs, synthetic weights, a trained run's rows and
scores, and running a command."""

import collections
import subprocess
import sys

import torch

from configs import tiny
from dualattn.evaluation.evaluator import ReIDEvaluator
from dualattn.models.attention import reduced_channels
from dualattn.run.data import load_data
from dualattn.run.model import load_model, untrained_model
from dualattn.run.workdir import RunDir

# One block per stage, 8 base channels: same code paths as ResNet-50, 256 output channels.
TINY_MODEL = dict(stage_sizes=(1, 1, 1, 1), width=8)


def tiny_config(data_paths, **optim):
    """configs/tiny.py on the dataset at ``data_paths`` = (raw folder, prepared folder)."""
    c = tiny.get_config()
    c.dataset.root, c.dataset.data_dir = str(data_paths[0]), str(data_paths[1])
    for k, v in optim.items():
        setattr(c.optim, k, v)
    return c


def read_rows(workdir):
    """The rows of a run's metrics.jsonl."""
    return RunDir(workdir).rows()


def evaluate_run(config, workdir, which="latest"):
    """``(step, Scores)`` of a run's ``which`` checkpoint ("untrained": the initial network),
    as ``python -m dualattn.evaluate`` computes them."""
    model = None if which == "untrained" else load_model(config, workdir, which)
    data = load_data(config)
    model = model or untrained_model(config, data.num_classes)
    return model.step, ReIDEvaluator(config, data)(model)


def run_command(module: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m module args...`` from the project root, output captured as text."""
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True,
                          text=True, timeout=timeout)


def assert_one_error_line(proc: subprocess.CompletedProcess, message: str) -> None:
    """A failed command whose stderr ends in one ``error:`` line containing ``message``, with
    no traceback anywhere."""
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, proc.stderr[-3000:]


def se_params(stage_sizes, width, reduction=16):
    """Parameters SE adds: two biased FCs per bottleneck, C -> C/r -> C."""
    total = 0
    for i, n in enumerate(stage_sizes):
        c = width * 2**i * 4
        r = reduced_channels(c, reduction)
        total += n * (c * r + r + r * c + c)
    return total


def torchvision_state_dict(seed=0, stage_sizes=(1, 1, 1, 1), width=8, with_se=False):
    """Random tensors under torchvision's ResNet names and torch's layouts (OIHW)."""
    g = torch.Generator().manual_seed(seed)
    sd = collections.OrderedDict()

    def bn(prefix, c):
        sd[f"{prefix}.weight"] = torch.rand(c, generator=g) + 0.5
        sd[f"{prefix}.bias"] = torch.randn(c, generator=g)
        sd[f"{prefix}.running_mean"] = torch.randn(c, generator=g)
        sd[f"{prefix}.running_var"] = torch.rand(c, generator=g) + 0.5
        sd[f"{prefix}.num_batches_tracked"] = torch.tensor(7)

    sd["conv1.weight"] = torch.randn(width, 3, 7, 7, generator=g)
    bn("bn1", width)
    cin = width
    for i, n in enumerate(stage_sizes):
        w = width * 2**i
        for j in range(n):
            p = f"layer{i + 1}.{j}"
            sd[f"{p}.conv1.weight"] = torch.randn(w, cin, 1, 1, generator=g)
            bn(f"{p}.bn1", w)
            sd[f"{p}.conv2.weight"] = torch.randn(w, w, 3, 3, generator=g)
            bn(f"{p}.bn2", w)
            sd[f"{p}.conv3.weight"] = torch.randn(4 * w, w, 1, 1, generator=g)
            bn(f"{p}.bn3", 4 * w)
            if j == 0:
                sd[f"{p}.downsample.0.weight"] = torch.randn(4 * w, cin, 1, 1, generator=g)
                bn(f"{p}.downsample.1", 4 * w)
            if with_se:
                sd[f"{p}.se.fc1.weight"] = torch.randn(max(1, 4 * w // 16), 4 * w, 1, 1,
                                                       generator=g)
                sd[f"{p}.se.fc1.bias"] = torch.randn(max(1, 4 * w // 16), generator=g)
                sd[f"{p}.se.fc2.weight"] = torch.randn(4 * w, max(1, 4 * w // 16), 1, 1,
                                                       generator=g)
                sd[f"{p}.se.fc2.bias"] = torch.randn(4 * w, generator=g)
            cin = 4 * w
    sd["fc.weight"] = torch.randn(1000, cin, generator=g)
    sd["fc.bias"] = torch.randn(1000, generator=g)
    return sd
