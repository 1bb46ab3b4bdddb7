"""Convert between a run and a PyTorch state dict of the twin, in either direction.

    python -m dualattn.convert [--config CONFIG] IN OUT

  IN a run's workdir, OUT a .safetensors or .pth file: the run's final checkpoint (or
      --checkpoint=best) as a state dict of the PyTorch twin
      (dualattn.interop.torch_model.TorchReIDNet, strict=True).
  IN a .pth/.pt/.bin/.safetensors state dict of the twin (a PyTorch ReID model in its names),
      OUT a new workdir: our checkpoint of it, at step 0, as both `best` and `latest`, so that
      `python -m dualattn.evaluate --workdir OUT` scores it and `python -m dualattn.train
      --workdir OUT` fine-tunes it. ImageNet backbones need no conversion: pass them as
      --config.pretrained.

The model settings (config.model) must be those of the weights; the classifier size is read
from them. Exporting a run needs no --config: the run's saved config.json is used. Names and
layouts: ``dualattn.weights``; torch is needed only to write ``.pth``.
"""

from __future__ import annotations

from pathlib import Path

from absl import app, flags

from configs import saved
from dualattn import cli
from dualattn.run.model import export_weights, import_weights
from dualattn.run.workdir import RunDir, check_output_file
from dualattn.weights.files import TORCH_SUFFIXES
from dualattn.weights.state_dict import ConversionError

_WEIGHT_FILES = (*TORCH_SUFFIXES, ".safetensors")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) != 3:
        raise app.UsageError("give IN and OUT: a run's workdir and a weights file to write, or "
                             "a weights file and a new workdir")
    src, dst = Path(argv[1]), Path(argv[2])
    if src.is_dir():
        config = FLAGS.config
        if config is None and RunDir(src).config.is_file():  # the run's own config
            config = saved.get_config(str(RunDir(src).config))
        if config is None:
            cli.require("config")
        step = export_weights(config, src, check_output_file(dst, "OUT"), FLAGS.checkpoint)
        print(f"wrote {dst}: the {FLAGS.checkpoint} checkpoint of {src} (step {step})")
    elif src.suffix in _WEIGHT_FILES:
        cli.require("config")
        RunDir(dst).prepare()  # a new workdir that can be written, before any work
        num_classes = import_weights(FLAGS.config, src, dst)
        print(f"wrote {dst}/checkpoints: {src} as step 0 ({num_classes} classes)")
    else:
        raise ConversionError(f"{src} is neither a run's workdir nor a "
                              f"{'/'.join(_WEIGHT_FILES)} file")


def command() -> None:
    """The ``dualattn-convert`` console script: ``python -m dualattn.convert``."""
    cli.define_config_flag("The model's configuration file.")
    flags.DEFINE_enum("checkpoint", "latest", ["latest", "best"], "Which checkpoint to export: "
                      "the final model, or the one with the best test mAP.")
    cli.run(main, positional=True)


if __name__ == "__main__":
    command()
