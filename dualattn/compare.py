"""Numerics of our network against its PyTorch twin, each against a float64 ground truth.

    python -m dualattn.compare --config configs/market.py [--weights FILE] [--steps 3]
    python -m dualattn.compare --workdir runs/market
    python -m dualattn.compare --config configs/market.py --config.model.dtype=bfloat16
    python -m dualattn.compare --train --config configs/synthetic.py [--seeds 3]

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

``--train`` trains both on the config's dataset side by side instead
(``dualattn.interop.twin_training``: the same initial weights, every augmented batch made once
and stepped on by both, the same recipe): the first ``--reference_steps`` steps' losses
against float64, one row per evaluation (each one's loss, R1, mAP and mINP, and the relative
distance between their parameters), the step at which their losses separate and why, and then
ours alone at the next ``--seeds`` - 1 seeds (runs in ``--train_dir``) to set the final mAP
difference against ours' seed spread.
"""

from __future__ import annotations

import jax
from absl import flags

from dualattn import cli
from dualattn.config_check import check_config
from dualattn.errors import ConfigError
from dualattn.interop.numerics import (
    build_pair,
    check_twin_objective,
    compare_networks,
    compared_precision,
    pk_batch,
    set_true_f32,
)
from dualattn.interop.twin_training import (
    EVALUATION_HEAD,
    format_evaluation,
    format_reference,
    seed_verdict,
    train_side_by_side,
)
from dualattn.training.loop import train_and_evaluate
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
    flags.DEFINE_bool("train", False, "Train ours and the twin side by side on the config's "
                      "dataset, then ours alone at more seeds (see the module docstring).")
    flags.DEFINE_integer("seeds", 3, "With --train: seeds of ours for the spread, the first "
                         "being config.seed (the side-by-side run).")
    flags.DEFINE_integer("reference_steps", 5, "With --train: steps also run in float64.")
    flags.DEFINE_string("train_dir", "runs/twin", "With --train: where ours' runs at the "
                        "other seeds go (SEED/ under it; an existing one resumes).")
    flags.DEFINE_bool("reference", True, "Also run both networks in float64 on the CPU, the "
                      "ground truth each is compared with (--noreference: faster, no verdicts).")


def train_both(config) -> None:
    """``--train``: the side-by-side run, then ours at the other seeds."""
    if config.model.dtype != "float32":
        raise ConfigError("compare --train runs float32; pass --config.model.dtype=float32")
    if FLAGS.seeds < 2:
        raise ConfigError("--seeds must be at least 2 for a spread")
    check_config(config, devices=1)  # it trains on one device
    print(f"ours (JAX on {jax.devices()[0].platform}) and the PyTorch twin (on "
          f"{FLAGS.torch_device}) on {config.dataset.name}, seed {config.seed}, from the same "
          "weights and on the same batches; float32, TF32 off", flush=True)
    evaluations = 0

    def evaluation(e):  # the table's head before its first row, after the float64 table
        nonlocal evaluations
        if not evaluations:
            print(EVALUATION_HEAD)
        evaluations += 1
        print(format_evaluation(e), flush=True)

    rows = []

    def reference(row):  # printed once the float64 steps are done
        rows.append(row)
        if len(rows) == FLAGS.reference_steps:
            print(f"the first {len(rows)} steps against float64 (both frameworks in float64 on "
                  f"the CPU, the same batches):\n{format_reference(rows)}\n", flush=True)

    result = train_side_by_side(config, torch_device=FLAGS.torch_device,
                                reference_steps=FLAGS.reference_steps,
                                on_evaluation=evaluation, on_reference=reference)
    if result.reference_agreement is not None:
        print(f"float64 reference: ours and torch's losses agree to "
              f"{result.reference_agreement:.1e} over those steps")
    print(f"\n{result.separation.describe()}")
    if result.gate:
        print(f"attention gate alpha at the end: ours {result.gate[-1][0]:+.5f}, twin "
              f"{result.gate[-1][1]:+.5f}")
    final = result.evaluations[-1]
    maps = [final.ours["mAP"]]
    for seed in range(config.seed + 1, config.seed + FLAGS.seeds):
        c = config.copy_and_resolve_references()
        c.seed, c.eval.baselines, c.eval.report = seed, False, False
        print(f"\nours alone at seed {seed} in {FLAGS.train_dir}/seed{seed}:", flush=True)
        maps.append(train_and_evaluate(c, f"{FLAGS.train_dir}/seed{seed}").mAP)
    print("\n" + seed_verdict(final.twin["mAP"], maps))


def main(argv):
    cli.require("config")
    set_true_f32()
    config = FLAGS.config
    if FLAGS.train:
        check_twin_objective(config)
        train_both(config)
        return
    compared_precision(config)
    check_config(config)
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
