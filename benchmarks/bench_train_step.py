"""Train-step speed: our jitted JAX step against the PyTorch twin, same model, batch and size.

    python -m benchmarks.bench_train_step [--config configs/market.py] [--steps 5] [--warmup 2]

Each framework runs in its own process (so peak memory is its own), one after the other, on
the same settings: the network of ``config.model``, ``config.input.p x k`` images at
``height x width``, the full objective (label-smoothed CE + batch-hard triplet) and Adam with
L2 weight decay. Ours is the trainer's real ``train_step`` with augmentation switched off (the
twin's input is likewise ready-made); it receives uint8 images and normalises them on the
device, the twin receives normalised float32. Printed: images/s (after ``--warmup`` steps,
which include compilation), peak memory and the ratio. Ours starts as the trainer does, with
``dualattn.run.xla_flags``' CPU flags where ``XLA_FLAGS`` does not already set them; the flags it
ran with are printed under the table.

Precision follows the platform, as users would run each framework:
- CPU: f32 on both sides.
- GPU: ours with ``model.dtype=bfloat16``; the twin in AMP bf16 autocast, channels_last and
  ``torch.compile`` (``--no-compile`` / ``--no-channels-last`` to drop those). TF32 is left to
  each framework's default here: this is a speed comparison, numerics are
  ``dualattn.compare``'s job.

Peak memory: process peak RSS on the CPU; on a GPU the allocator's peak (JAX's
``peak_bytes_in_use``, torch's ``max_memory_allocated``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import resource
import subprocess
import sys
import time

import numpy as np


def load_config(path: str, overrides: list[str]):
    """``get_config()`` of the file at ``path`` with ``KEY=VALUE`` overrides (JSON values)."""
    spec = importlib.util.spec_from_file_location("bench_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    for item in overrides:
        key, value = item.split("=", 1)
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = type(node[leaf])(json.loads(value)) if not isinstance(node[leaf], str) \
            else value
    return config


def batch(config, seed=0):
    rng = np.random.default_rng(seed)
    p, k, h, w = config.input.p, config.input.k, config.input.height, config.input.width
    images = rng.integers(0, 256, (p * k, h, w, 3), dtype=np.uint8)
    return images, np.repeat(np.arange(p), k).astype(np.int32)


NUM_CLASSES = 751


def run_jax(config, steps: int, warmup: int, dtype: str = "auto",
            count_flops: bool = False) -> dict:
    """Our step's images/s; ``dtype`` "auto" is bfloat16 on a GPU, float32 elsewhere. With
    ``count_flops`` the result carries XLA's FLOP count of one step (``cost_analysis``; it
    compiles the step once more, from the persistent cache when one is set)."""
    import os

    from dualattn.run import xla_flags

    xla_flags.prefer_cpu_flags()  # as the entry points do, before the backend starts
    import jax

    from dualattn.run.model import create_train_state
    from dualattn.training.augment import AugmentConfig
    from dualattn.training.step import make_train_step

    gpu = jax.devices()[0].platform == "gpu"
    config.model.dtype = ("bfloat16" if gpu else "float32") if dtype == "auto" else dtype
    train = create_train_state(config, NUM_CLASSES, 1000)
    graphdef, state = train.graphdef, train.state
    step_fn = make_train_step(config, train.schedule, AugmentConfig(
        flip=False, translate=0, rotate_degrees=0.0, erase_prob=0.0))
    images, labels = batch(config)
    images, labels = jax.device_put(images), jax.device_put(labels)
    key = jax.random.key(0)
    flops = step_flops(step_fn, graphdef, state, images, labels, key) if count_flops else None
    for _ in range(warmup):
        state, metrics = step_fn(graphdef, state, images, labels, key)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step_fn(graphdef, state, images, labels, key)
    jax.block_until_ready(metrics)
    seconds = time.perf_counter() - start
    device = jax.devices()[0]
    peak = (device.memory_stats() or {}).get("peak_bytes_in_use") if gpu else None
    precision = "bf16 compute" if config.model.dtype == "bfloat16" else "f32"
    return {"framework": f"JAX {jax.__version__}", "device": device.device_kind,
            "precision": precision, "seconds": seconds, "steps": steps,
            "batch": int(images.shape[0]), "peak_bytes": peak, "loss": float(metrics["loss"]),
            "flops_per_step": flops, "xla_flags": os.environ.get("XLA_FLAGS", "")}


def step_flops(step_fn, *args) -> float | None:
    """Floating-point operations of one compiled train step, as XLA's cost analysis counts
    them (forward, backward and optimizer; a multiply-add is two)."""
    try:
        cost = step_fn.lower(*args).compile().cost_analysis()
    except Exception:  # an analysis the backend does not offer is a missing figure
        return None
    if isinstance(cost, (list, tuple)):  # older jax: one dict per computation
        cost = cost[0] if cost else {}
    flops = (cost or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


def run_torch(config, steps: int, warmup: int, compile_: bool, channels_last: bool) -> dict:
    import torch

    from dualattn.interop.torch_model import TorchReIDNet
    from dualattn.interop.traces import torch_reid_loss
    from dualattn.models.preprocess import IMAGENET_MEAN, IMAGENET_STD

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    model = TorchReIDNet(NUM_CLASSES, **config.model.to_dict()).to(device).train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad],
                           lr=config.optim.lr, weight_decay=config.optim.weight_decay)
    images, labels = batch(config)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
    x = ((torch.from_numpy(images).permute(0, 3, 1, 2).float() - mean) / std).to(device)
    y = torch.from_numpy(labels).long().to(device)
    notes = ["f32"]
    if cuda:
        notes = ["AMP bf16"]
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
            notes.append("channels_last")
    forward = torch.compile(model) if (cuda and compile_) else model
    if cuda and compile_:
        notes.append("torch.compile")

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            feats, logits = forward(x)
            loss, _ = torch_reid_loss(feats.float(), logits.float(), y, config.loss)
        loss.backward()
        opt.step()
        return loss

    for _ in range(warmup):
        loss = step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        loss = step()
    loss = float(loss)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"framework": f"PyTorch {torch.__version__}",
            "device": torch.cuda.get_device_name() if cuda else "cpu",
            "precision": " + ".join(notes), "seconds": seconds, "steps": steps,
            "batch": int(x.shape[0]),
            "peak_bytes": torch.cuda.max_memory_allocated() if cuda else None, "loss": loss}


def worker(args) -> None:
    config = load_config(args.config, args.set)
    if args.worker == "jax":
        result = run_jax(config, args.steps, args.warmup, args.dtype, args.count_flops)
    else:
        result = run_torch(config, args.steps, args.warmup, args.compile, args.channels_last)
    if result["peak_bytes"] is None:  # CPU: the process's peak resident memory (KiB on Linux)
        result["peak_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print("RESULT " + json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/market.py")
    parser.add_argument("--set", action="append", default=[],
                        help="config override KEY=VALUE, e.g. input.p=4 (repeatable)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                        help="ours: model.dtype (auto: bfloat16 on a GPU, float32 elsewhere)")
    parser.add_argument("--count-flops", action="store_true",
                        help="ours: also report XLA's FLOP count of one step")
    parser.add_argument("--worker", choices=["jax", "torch"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    config = load_config(args.config, args.set)
    batch_size = config.input.p * config.input.k
    print(f"{platform.processor() or platform.machine()}; batch {batch_size} at "
          f"{config.input.height}x{config.input.width}; {args.steps} timed steps after "
          f"{args.warmup} warm-up; use_se={config.model.use_se} use_sa={config.model.use_sa} "
          f"stages={tuple(config.model.stage_sizes)} width={config.model.width}")
    results = []
    for name in ("jax", "torch"):
        cmd = [sys.executable, "-m", "benchmarks.bench_train_step", "--worker", name,
               "--config", args.config, "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--dtype", args.dtype]
        cmd += [f"--set={s}" for s in args.set]
        cmd += [] if args.compile else ["--no-compile"]
        cmd += [] if args.channels_last else ["--no-channels-last"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode or not lines:
            sys.exit(f"{name} worker failed:\n{proc.stderr[-3000:]}")
        results.append(json.loads(lines[-1][len("RESULT "):]))
    base = batch_size * args.steps / results[1]["seconds"]
    print(f"\n{'framework':<22}{'device':<24}{'precision':<38}{'images/s':>10}{'peak MiB':>10}"
          f"{'vs twin':>9}")
    for r in results:
        ips = batch_size * args.steps / r["seconds"]
        print(f"{r['framework']:<22}{r['device'][:23]:<24}{r['precision']:<38}{ips:>10.1f}"
              f"{r['peak_bytes'] / 2**20:>10.0f}{ips / base:>8.2f}x")
    print(f"JAX ran with XLA_FLAGS={results[0]['xla_flags']!r}")


if __name__ == "__main__":
    main()
