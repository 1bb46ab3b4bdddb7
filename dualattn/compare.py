"""Numerics of our network against its PyTorch twin, each against a float64 ground truth.

    python -m dualattn.compare --config configs/market.py [--weights FILE] [--steps 3]
    python -m dualattn.compare --workdir runs/market
    python -m dualattn.compare --config configs/market.py --config.model.dtype=bfloat16

Both frameworks on the same weights and batch (P identities x K images, random pixels): ours
and the twin in float32 (TF32 off) or bfloat16 (the twin under autocast), then both in float64
on the CPU (``--noreference`` skips these). One row per quantity, three relative differences
and a verdict (``dualattn.interop.numerics``; BENCHMARKS.md's "Numerics" reads them).
``--workdir W`` compares a run's final model (with the config it saved, unless ``--config``);
without it or ``--weights`` the network starts from its initialisation with every path opened
(random BN statistics, attention gate 0.5, a larger classifier) so that nothing hides behind a
zero. A ``--weights`` file is either a full state dict of the twin (ours converted, or a
PyTorch ReID checkpoint in the twin's names) or a torchvision/timm backbone. JAX runs on its
default device and the twin on ``--torch_device``; the float64 runs are on the CPU.
"""

from __future__ import annotations

import jax
from absl import flags

from dualattn import cli
from dualattn.interop.numerics import (
    build_pair,
    check_twin_objective,
    compare_networks,
    compared_precision,
    pk_batch,
    set_true_f32,
)
from dualattn.weights.files import read_state_dict

FLAGS = flags.FLAGS


def define_flags() -> None:
    cli.define_config_flag("Model, loss and optimizer settings (default with --workdir: the "
                           "run's saved config).")
    cli.define_workdir_flag("A run whose final model both frameworks load.")
    flags.DEFINE_string("weights", "", "A .pth/.safetensors state dict: the twin's (full model) "
                        "or a torchvision/timm backbone. Default: initialisation.")
    flags.DEFINE_integer("num_classes", None, "Classifier size (default: the weights file's, "
                         "else 751, Market-1501's training identities).")
    flags.DEFINE_integer("steps", 3, "Optimizer steps before comparing parameters.")
    flags.DEFINE_integer("p", None, "Identities per batch (default config.input.p).")
    flags.DEFINE_integer("k", None, "Images per identity (default config.input.k).")
    flags.DEFINE_float("lr", None, "Constant learning rate (default config.optim.lr).")
    flags.DEFINE_string("torch_device", "cpu", "Device of the PyTorch twin: cpu or cuda.")
    flags.DEFINE_bool("reference", True, "Also run both networks in float64 on the CPU, the "
                      "ground truth each is compared with (--noreference: faster, no verdicts).")


def main(argv):
    cli.require("config")
    set_true_f32()
    config = FLAGS.config
    compared_precision(config)
    check_twin_objective(config)
    num_classes = FLAGS.num_classes
    if num_classes is None:
        num_classes = 751
        if FLAGS.weights:
            sd = read_state_dict(FLAGS.weights)
            if "classifier.weight" in sd:
                num_classes = sd["classifier.weight"].shape[0]
    p, k = FLAGS.p or config.input.p, FLAGS.k or config.input.k
    model, twin, how = build_pair(config, num_classes, FLAGS.weights, FLAGS.torch_device,
                                  FLAGS.workdir)
    images, labels = pk_batch(p, k, config.input.height, config.input.width, config.seed)
    precision = ("bfloat16: ours model.dtype=bfloat16, torch under autocast(bfloat16)"
                 if config.model.dtype == "bfloat16" else "float32, TF32 off")
    print(f"weights: {how}\nbatch: {p} ids x {k} images at {config.input.height}x"
          f"{config.input.width}; JAX on {jax.devices()[0].platform}, torch on "
          f"{FLAGS.torch_device}; {precision}")
    report = compare_networks(model, twin, config, images, labels, steps=FLAGS.steps,
                              lr=FLAGS.lr, reference=FLAGS.reference)
    print(report.format())


def command() -> None:
    """The ``dualattn-compare`` console script: ``python -m dualattn.compare``."""
    define_flags()
    cli.run(main, distributed=False)


if __name__ == "__main__":
    command()
