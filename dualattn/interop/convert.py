"""Convert between a run and a PyTorch state dict of the twin, in either direction.

    python -m dualattn.interop.convert [--config CONFIG] IN OUT

A run's checkpoint becomes a ``.safetensors``/``.pth`` file that
``dualattn.interop.torch_model.TorchReIDNet(...).load_state_dict(sd, strict=True)`` accepts;
such a file (ours, or a PyTorch ReID model in the twin's names) becomes a new run at step 0.
Names and layouts: ``dualattn.interop.state_dict``; files: ``dualattn.interop.files`` (torch
is needed only to write ``.pth``).

  IN a run's workdir, OUT a .safetensors or .pth file: the run's final checkpoint (or
      --checkpoint=best) as a state dict of the PyTorch twin
      (dualattn.interop.torch_model.TorchReIDNet, strict=True).
  IN a .pth/.pt/.bin/.safetensors state dict of the twin (a PyTorch ReID model in its names),
      OUT a new workdir: our checkpoint of it, at step 0, as both `best` and `latest`, so that
      `python -m dualattn.evaluate --workdir OUT` scores it and `python -m dualattn.train
      --workdir OUT` fine-tunes it. ImageNet backbones need no conversion: pass them as
      --config.pretrained.

The model settings (config.model) must be those of the weights; the classifier size is read
from them. Exporting a run needs no --config: the run's saved config.json is used.
"""

from __future__ import annotations

from pathlib import Path

from absl import app, flags
from flax import nnx

from configs import saved
from dualattn import checkpoint, cli
from dualattn.interop.files import TORCH_SUFFIXES, read_state_dict, write_state_dict
from dualattn.interop.state_dict import ConversionError, flax_to_torch, torch_to_flax
from dualattn.state import create_train_state, load_model

_WEIGHT_FILES = (*TORCH_SUFFIXES, ".safetensors")


def export_run(config, workdir: Path, out: Path, which: str = "latest") -> int:
    """Write the run's ``which`` checkpoint as a twin state dict; returns its training step."""
    if out.suffix not in (".safetensors", ".pth"):
        raise ConversionError(f"{out}: write a .safetensors or .pth file")
    model = load_model(config, workdir, which)
    write_state_dict(out, flax_to_torch(nnx.merge(model.graphdef, model.state)))
    return model.step


def import_state_dict(config, path: Path, workdir: Path) -> int:
    """Write a twin state dict as step 0 of a new run in ``workdir``; returns its class count."""
    state_dict = read_state_dict(path)
    if "classifier.weight" not in state_dict:
        raise ConversionError(f"{path} has no classifier.weight, so it is not a full ReID model; "
                              f"for an ImageNet backbone use --config.pretrained={path}")
    ckpt = checkpoint.Checkpointer(workdir / "checkpoints")
    if ckpt.latest_step() is not None or ckpt.best.latest_step() is not None:
        raise ConversionError(f"{workdir} already holds checkpoints; convert into a new workdir")
    num_classes = int(state_dict["classifier.weight"].shape[0])
    graphdef, state, _ = create_train_state(config, num_classes, 1, pretrained=False)
    model, optimizer = nnx.merge(graphdef, state)
    torch_to_flax(state_dict, model)
    state = nnx.state((model, optimizer))
    meta = {"converted_from": str(path.absolute()), "num_classes": num_classes}
    ckpt.save_latest(0, state, {"step": 0, "best_mAP": -1.0, **meta})
    ckpt.save_best(0, state, meta)
    ckpt.wait()
    return num_classes


def main(argv):
    if len(argv) != 3:
        raise app.UsageError("give IN and OUT: a run's workdir and a weights file to write, or "
                             "a weights file and a new workdir")
    src, dst = Path(argv[1]), Path(argv[2])
    if src.is_dir():
        config = FLAGS.config
        if config is None and (src / saved.FILENAME).is_file():  # the run's own config
            config = saved.get_config(str(src / saved.FILENAME))
        if config is None:
            cli.require("config")
        step = export_run(config, src, dst, FLAGS.checkpoint)
        print(f"wrote {dst}: the {FLAGS.checkpoint} checkpoint of {src} (step {step})")
    elif src.suffix in _WEIGHT_FILES:
        cli.require("config")
        num_classes = import_state_dict(FLAGS.config, src, dst)
        print(f"wrote {dst}/checkpoints: {src} as step 0 ({num_classes} classes)")
    else:
        raise ConversionError(f"{src} is neither a run's workdir nor a "
                              f"{'/'.join(_WEIGHT_FILES)} file")


FLAGS = flags.FLAGS


def command() -> None:
    """The ``dualattn-convert`` console script: ``python -m dualattn.interop.convert``."""
    cli.define_config_flag("The model's configuration file.")
    flags.DEFINE_enum("checkpoint", "latest", ["latest", "best"], "Which checkpoint to export: "
                      "the final model, or the one with the best test mAP.")
    cli.run(main, positional=True)


if __name__ == "__main__":
    command()
