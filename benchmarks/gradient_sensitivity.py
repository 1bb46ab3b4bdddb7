"""Where the network's float32 gradients part from float64: one variant of the network per line.

    python -m benchmarks.gradient_sensitivity                      # Market network, 128x64
    python -m benchmarks.gradient_sensitivity --workdir runs/synthetic

The PyTorch twin alone (it is the faster of the two on a CPU, and ``dualattn.compare``
shows ours matches it), on the same weights and batch (P8 x K4 random pixels), once in float32
and once in float64, one train step of the paper's objective. Printed per variant: the
largest relative difference of the train features and of the gradients (``max|g32 - g64| /
max|g64|`` per tensor; the largest over tensors, the median, and the worst tensor). The two
attention BN biases whose true gradient is exactly zero are left out (see compare).

Variants change one thing each: the paths ``compare`` opens (BN statistics, attention gate,
classifier scale) left closed or partly closed, BN in eval mode (running statistics instead of
batch statistics), one bottleneck per stage instead of ResNet-50's depth, and the network's
two kinks smoothed: ReLU replaced by GELU, max-pooling by average pooling. The kinks are where
the differences come from; BENCHMARKS.md ("Numerics") has the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import copy

import numpy as np
import torch

from configs import market, saved
from dualattn.interop.numerics import (
    ZERO_GRADIENT,
    build_pair,
    exercise_all_paths,
    pk_batch,
    relative,
    twin_of,
)
from dualattn.interop.traces import torch_reid_loss
from dualattn.run.model import create_model


@contextlib.contextmanager
def smoothed(relu: bool, max_pool: bool):
    """The twin's ReLUs as GELUs and/or its max-pool as an average pool, inside the block."""
    saved_relu, saved_pool = torch.relu, torch.nn.MaxPool2d.forward
    if relu:
        torch.relu = torch.nn.functional.gelu
    if max_pool:
        torch.nn.MaxPool2d.forward = (
            lambda self, x: torch.nn.functional.avg_pool2d(x, self.kernel_size, self.stride,
                                                           self.padding))
    try:
        yield
    finally:
        torch.relu, torch.nn.MaxPool2d.forward = saved_relu, saved_pool


def one_step(twin, config, images, labels, dtype, relu=False, max_pool=False, eval_bn=False):
    twin = copy.deepcopy(twin).to(dtype).train()
    for m in twin.modules() if eval_bn else ():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()  # normalise with the running statistics
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(dtype)
    with smoothed(relu, max_pool):
        feats, logits = twin(x)
        torch_reid_loss(feats, logits, torch.from_numpy(labels), config.loss)[0].backward()
    grads = {n: p.grad.double().numpy().copy() for n, p in twin.named_parameters()
             if p.grad is not None and n not in ZERO_GRADIENT}
    return feats.detach().double().numpy(), grads


def line(name, twin, config, images, labels, **variant) -> str:
    f32, g32 = one_step(twin, config, images, labels, torch.float32, **variant)
    f64, g64 = one_step(twin, config, images, labels, torch.float64, **variant)
    errors = {n: relative(g32[n], g64[n]) for n in g64}
    worst = max(errors, key=errors.get)
    return (f"{name:<44}{relative(f32, f64):>10.1e}{errors[worst]:>10.1e}"
            f"{np.median(list(errors.values())):>10.1e}  {worst}")


def variants(args):
    """``(name, twin, config, variant)`` rows."""
    if args.workdir:
        config = saved.get_config(f"{args.workdir}/{saved.FILENAME}")
        _, twin, _ = build_pair(config, 0, workdir=args.workdir)
        yield f"the final model of {args.workdir}", twin, config, {}
    else:
        config = market.get_config()
        config.model.cpu_schedule = "off"

        def twin_with(opened=True, small_classifier=False, stages=None):
            c = config.copy_and_resolve_references()
            if stages:
                c.model.stage_sizes = stages
            model = create_model(c, 751)
            kernel = model.classifier.kernel[...]
            if opened:
                exercise_all_paths(model, c.seed)
            if small_classifier:
                model.classifier.kernel[...] = kernel
            return twin_of(model, c.model.to_dict())
        opened = twin_with()
        yield "as compare builds it (every path opened)", opened, config, {}
        yield "plain initialisation (paths closed)", twin_with(opened=False), config, {}
        yield "opened, classifier at its init std 0.001", twin_with(small_classifier=True), \
            config, {}
        yield "opened, one bottleneck per stage", twin_with(stages=(1, 1, 1, 1)), config, {}
        twin = opened
    yield "BN with running statistics (eval mode)", twin, config, {"eval_bn": True}
    yield "ReLU -> GELU", twin, config, {"relu": True}
    yield "max-pool -> average pool", twin, config, {"max_pool": True}
    yield "ReLU -> GELU and max-pool -> average pool", twin, config, \
        {"relu": True, "max_pool": True}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="", help="a run whose final model to use")
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=64)
    args = parser.parse_args()
    images, labels = pk_batch(8, 4, args.height, args.width, 0)
    print(f"twin, float32 vs float64, one train step, P8 x K4 at {args.height}x{args.width}")
    print(f"{'variant':<44}{'features':>10}{'grads':>10}{'median':>10}  worst tensor")
    for name, twin, config, variant in variants(args):
        print(line(name, twin, config, images, labels, **variant), flush=True)


if __name__ == "__main__":
    main()
