"""Will it fit? A run's programs compiled for GPUs and TPUs that are not here.

    python -m dualattn.plan --config configs/market.py --target h100 --devices 8
    python -m dualattn.plan --config configs/market.py --target h100 --target v5e \
        --dtype float32 --dtype bfloat16 --out plan.json

The real XLA:GPU and XLA:TPU compilers (the jax-cuda12 plugin and libtpu; no device needed)
compile the trainer's own train step and the evaluator's forward pass, over a mesh of the
target's devices with the trainer's shardings, and the table says, per device: peak memory
against the device's (and the largest batch that fits, from two more compiles at 32 and 64
per device), FLOPs per step and per image, the collectives the compiler inserted (count, bytes,
dtype: the gradient sum must be float32), the images/s bound at 100 % of the chip's peak
(a bound, not a prediction) and the compile time. ``--out`` writes the same as JSON.
Targets: ``dualattn.run.targets``.
"""

import os
import sys

# The compilers may live in a folder of their own (pip install --target DIR "jax[tpu,cuda12]"),
# outside the environment: a JAX process that finds the plugins probes for their devices.
# Appended, so that the environment's own JAX and NumPy come first.
if os.environ.get("DUALATTN_COMPILERS"):
    sys.path.append(os.environ["DUALATTN_COMPILERS"])

# Before JAX starts: the plugins serve their compilers and topologies only, no backend of
# theirs starts, and libtpu neither looks for a TPU nor locks it.
for _key, _value in (("JAX_PLATFORMS", "cpu"), ("TPU_SKIP_MDS_QUERY", "1"),
                     ("ALLOW_MULTIPLE_LIBTPU_LOAD", "1"), ("TPU_WORKER_HOSTNAMES", "localhost"),
                     ("TPU_ACCELERATOR_TYPE", "v5litepod-8")):
    os.environ.setdefault(_key, _value)

import itertools  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

from absl import flags  # noqa: E402

from dualattn import cli  # noqa: E402
from dualattn.config_check import check_config  # noqa: E402
from dualattn.errors import ConfigError  # noqa: E402
from dualattn.run.aot import plan  # noqa: E402
from dualattn.run.targets import GIB, TARGETS, target  # noqa: E402

GPU_TARGETS = {k for k, t in TARGETS.items() if t.platform == "cuda"}
from dualattn.run.workdir import atomic_write, check_output_file  # noqa: E402

FLAGS = flags.FLAGS


def describe(p) -> str:
    """The plan as the table's lines."""
    t, e = p.train, p.evaluate
    fit = "fits" if p.fits else "DOES NOT FIT"
    largest = p.largest_batch_per_device
    pool = " (JAX's 75 % share of the GPU)" if p.target in GPU_TARGETS else ""
    lines = [f"{p.name} x {p.devices}, {p.dtype}: global batch {t.batch} "
             f"({p.batch_per_device} per device)",
             f"  train step   peak {t.peak_bytes / GIB:.2f} GiB of {p.memory_bytes / GIB:.1f} GiB "
             f"per device{pool}: {fit}"
             + (f"; largest batch per device that fits ~{largest} "
                f"({p.slope_bytes / GIB:.3f} GiB per image)" if largest is not None else ""),
             f"               {t.flops / 1e9:,.1f} GFLOP per step per device, "
             f"{t.flops * p.devices / t.batch / 1e9:.2f} GFLOP per image ({t.flops_source} "
             f"count); bound {p.images_per_s_bound:,.0f} images/s per device at 100 % of "
             f"{p.peak_flops / 1e12:.0f} TFLOP/s (a bound, not a prediction)"]
    summary = p.collective_summary()
    for op, entry in sorted(summary["by_kind"].items()):
        sizes = ", ".join(f"{d} {b / 2**20:.2f} MiB" for d, b in sorted(entry["bytes"].items()))
        lines.append(f"  {op:<13}{entry['count']:>4} per step: {sizes}")
    if summary["by_kind"]:
        lines.append(f"               gradients of every parameter: "
                     f"{summary['gradients_f32_bytes'] / 2**20:.2f} MiB in f32; the other f32 "
                     f"all-reduces (BatchNorm statistics, loss terms): "
                     f"{summary['rest_of_f32_all_reduce_bytes'] / 2**20:.2f} MiB")
    else:
        lines.append("  collectives  none (one device)")
    lines.append(f"  eval forward peak {e.peak_bytes / GIB:.2f} GiB at batch {e.batch}, "
                 f"{e.flops * p.devices / e.batch / 1e9:.2f} GFLOP per image, "
                 f"{len(e.collectives)} collectives")
    lines.append(f"  compiled in {t.seconds + e.seconds:.0f} s (train {t.seconds:.0f} s)")
    return "\n".join(lines)


def global_batch(batch: int, config) -> int:
    """``input.p`` for a global batch of P identities x ``input.k`` images, as the trainer
    samples it."""
    if batch % config.input.k:
        raise ConfigError(f"--batch {batch}: a batch is P identities x input.k="
                          f"{config.input.k} images; use a multiple of {config.input.k}")
    return batch // config.input.k


def main(argv):
    cli.require("config")
    out = check_output_file(FLAGS.out, "--out") if FLAGS.out else None
    config = FLAGS.config
    check_config(config)
    targets = [target(k) for k in FLAGS.target]
    batches = FLAGS.batch or [config.input.p * config.input.k]
    results = []
    for t, devices, batch, dtype in itertools.product(targets, FLAGS.devices, batches,
                                                      FLAGS.dtype or [config.model.dtype]):
        c = config.copy_and_resolve_references()
        c.model.dtype = dtype
        c.input.p = global_batch(batch * (devices if FLAGS.batch_per_device else 1), c)
        check_config(c, devices)
        p = plan(c, t, devices, c.input.p * c.input.k, FLAGS.num_classes, fit=FLAGS.fit)
        print(describe(p) + "\n", flush=True)
        results.append(p.as_dict())
    if out:
        atomic_write(out, json.dumps({"config": str(Path(FLAGS["config"].config_filename)),
                                      "plans": results}, indent=2) + "\n")
        print(f"wrote {out}")


def command() -> None:
    """The ``dualattn-plan`` console script: ``python -m dualattn.plan``."""
    cli.define_config_flag()
    flags.DEFINE_multi_enum("target", ["h100"], list(TARGETS), "Accelerators to plan for.")
    flags.DEFINE_multi_integer("devices", [8], "Device counts (GPUs: up to 8 per host).")
    flags.DEFINE_multi_enum("dtype", [], ["float32", "bfloat16"],
                            "Compute dtypes (default: the config's model.dtype).")
    flags.DEFINE_multi_integer("batch", [], "Global batches (default: input.p x input.k).")
    flags.DEFINE_bool("batch_per_device", False, "--batch is per device, not global.")
    flags.DEFINE_integer("num_classes", 751, "Classifier size (Market-1501: 751).")
    flags.DEFINE_bool("fit", True, "Compile the train step again at 32 and 64 per device "
                      "(or the batch and twice it) for the memory slope and the largest "
                      "batch that fits.")
    flags.DEFINE_string("out", None, "Write the plans as JSON here.")
    cli.run(main, distributed=False)


if __name__ == "__main__":
    command()
