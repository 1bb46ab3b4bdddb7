"""A trained run as one file that serves features, for ONNX runtimes or for JAX.

    python -m dualattn.export --workdir W --format onnx --out model.onnx
    python -m dualattn.export --workdir W --format stablehlo --out model.stablehlo

Both files take a batch of crops already resized to the run's input size, as uint8
``(batch, height, width, 3)`` RGB (NHWC), with the batch size free, and return float32
``(batch, D)`` test features: normalisation, the test feature, the flip average
(``eval.flip_test``) and L2 normalisation (``eval.normalize_features``) are inside, so the
features equal ``dualattn.FeatureExtractor``'s for the same resized crops.

* ``onnx``: the PyTorch twin with the run's weights, through ``torch.onnx.export``
  (``dualattn.interop.onnx``; needs ``torch``, ``onnx`` and ``onnxscript``), in float32.
  Input ``images``, output ``features``.
* ``stablehlo``: the Flax model through ``jax.export`` (``dualattn.serving.stablehlo``),
  lowered for CPU and CUDA, read back with JAX alone; plain Flax convolutions
  (``model.cpu_schedule`` is ignored), the run's ``model.dtype``.

The run's final checkpoint is exported unless ``--checkpoint=best``; its saved config is used
unless ``--config``. README shows how to call each file.
"""

from __future__ import annotations

from pathlib import Path

from absl import flags

from dualattn import cli
from dualattn.config_check import check_config
from dualattn.errors import UserError
from dualattn.run.model import InferenceModel, load_model
from dualattn.run.workdir import check_output_file
from dualattn.serving.stablehlo import export_stablehlo

FORMATS = {"onnx": ".onnx", "stablehlo": ".stablehlo"}


class ExportError(UserError, ValueError):
    """The export cannot be written as asked; the message says why."""


def export_onnx(config, model: InferenceModel, out: Path) -> None:
    """The twin of ``model`` as ONNX (torch is imported only here)."""
    try:
        from dualattn.interop import onnx
    except ImportError as e:
        raise ExportError(f"ONNX export needs torch, onnx and onnxscript ({e}); pip install "
                          "torch==2.13.0 onnx onnxscript (or export --format stablehlo)"
                          ) from None
    onnx.export_onnx(config, model, out)


def export_file(config, workdir: str | Path, fmt: str, out: Path,
                which: str = "latest") -> InferenceModel:
    """Export the run's ``which`` checkpoint as ``fmt`` to ``out``; returns the model."""
    if fmt not in FORMATS:
        raise ExportError(f"--format must be one of {sorted(FORMATS)}, not {fmt!r}")
    out = check_output_file(out, "--out")
    check_config(config)
    config = config.copy_and_resolve_references()
    config.model.cpu_schedule = "off"  # plain Flax convolutions: the file runs anywhere
    model = load_model(config, workdir, which)
    (export_onnx if fmt == "onnx" else export_stablehlo)(config, model, out)
    return model


FLAGS = flags.FLAGS


def main(argv):
    cli.require("config", "workdir", "format", "out")
    out = Path(FLAGS.out)
    model = export_file(FLAGS.config, FLAGS.workdir, FLAGS.format, out, FLAGS.checkpoint)
    size = out.stat().st_size / 2**20
    c = FLAGS.config.input
    print(f"wrote {out} ({FLAGS.format}, {size:.1f} MiB): the {FLAGS.checkpoint} checkpoint "
          f"(step {model.step}); input uint8 (batch, {c.height}, {c.width}, 3) RGB, output "
          "float32 (batch, D) features")


def command() -> None:
    """The ``dualattn-export`` console script: ``python -m dualattn.export``."""
    cli.define_config_flag()
    cli.define_workdir_flag()
    flags.DEFINE_enum("format", None, list(FORMATS), "onnx or stablehlo.")
    flags.DEFINE_string("out", None, "The file to write (.onnx or .stablehlo).")
    flags.DEFINE_enum("checkpoint", "latest", ["latest", "best"], "Which checkpoint to export: "
                      "the final model, or the one with the best test mAP.")
    cli.run(main, distributed=False)


if __name__ == "__main__":
    command()
