"""Weight conversion between our Flax model and PyTorch state dicts (torch-free, NumPy).

``flax_to_torch`` gives a state dict that ``TorchReIDNet.load_state_dict(strict=True)``
accepts; ``torch_to_flax`` is its inverse and checks every key and shape. Names and layouts
come from ``dualattn.interop.names``. As a command, converts a run's checkpoint to a PyTorch
file and a PyTorch file to a run (``USAGE`` below); torch is needed only to write ``.pth``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from flax import nnx

from dualattn.interop.names import to_flax_layout, to_torch_layout, torch_name


class ConversionError(ValueError):
    """The state dict does not fit the model; the message lists every offending key."""


def _bn_modules(names) -> set[str]:
    return {n.rsplit(".", 1)[0] for n in names if n.endswith(".running_mean")}


def state_to_torch(state: nnx.State) -> dict[str, np.ndarray]:
    """``name -> array`` in PyTorch names and layouts for every leaf of ``state`` (a model's
    variables, or gradients shaped like them)."""
    return {torch_name(path): to_torch_layout(path, np.asarray(var[...]))
            for path, var in nnx.to_flat_state(state)}


def flax_to_torch(model: nnx.Module) -> dict[str, np.ndarray]:
    """``name -> array`` in PyTorch layouts for every parameter and BN statistic of ``model``,
    plus what ``TorchReIDNet.load_state_dict(strict=True)`` expects beyond them."""
    out = state_to_torch(nnx.state(model))
    for bn in _bn_modules(out):
        out[f"{bn}.num_batches_tracked"] = np.zeros((), np.int64)
        if f"{bn}.bias" not in out:  # the BNNeck's bias: frozen at zero in BoT's layout
            out[f"{bn}.bias"] = np.zeros_like(out[f"{bn}.weight"])
    return out


def match_state_dict(state_dict: dict[str, np.ndarray], target: dict[tuple, nnx.Variable],
                     skip=lambda name: False) -> tuple[dict, list[str], list[str], set]:
    """Pair PyTorch names with the Flax variables in ``target`` (a flat state).

    Returns ``(updates, unexpected, shape_mismatches, seen)``: arrays in Flax layout by path,
    names with no variable, ``"name: file (..) vs model (..)"`` lines, and the paths the file
    named (whatever their shape). Names for which ``skip`` is true are ignored.
    """
    by_name = {torch_name(path): path for path in target}
    updates, unexpected, shapes, seen = {}, [], [], set()
    for name, value in state_dict.items():
        if skip(name):
            continue
        path = by_name.get(name)
        if path is None:
            unexpected.append(name)
            continue
        seen.add(path)
        value = to_flax_layout(path, np.asarray(value))
        if value.shape != target[path].shape:
            shapes.append(f"{name}: file {value.shape} vs model {target[path].shape}")
            continue
        updates[path] = value.astype(target[path].dtype)
    return updates, unexpected, shapes, seen


def assign(module: nnx.Module, state, updates: dict[tuple, np.ndarray]) -> None:
    """Write ``updates`` (path -> array) into ``state`` and push it into ``module``."""
    flat = dict(nnx.to_flat_state(state))
    for path, value in updates.items():
        flat[path][...] = value
    nnx.update(module, state)


def torch_to_flax(state_dict: dict[str, np.ndarray], model: nnx.Module) -> None:
    """Load a PyTorch-layout state dict into ``model`` in place; all keys must match."""
    state = nnx.state(model)
    flat = dict(nnx.to_flat_state(state))
    own = {torch_name(path) for path in flat}
    # BN counters, and the BNNeck bias that BoT's layout carries frozen at zero.
    ignored = {n for n in state_dict if n.endswith("num_batches_tracked")}
    ignored |= {f"{bn}.bias" for bn in _bn_modules(state_dict) if f"{bn}.bias" not in own}
    updates, unexpected, shapes, seen = match_state_dict(state_dict, flat, ignored.__contains__)
    problems = ([f"unexpected: {n}" for n in unexpected] + [f"shape: {s}" for s in shapes]
                + [f"missing: {torch_name(p)}" for p in flat if p not in seen])
    if problems:
        raise ConversionError(f"state dict does not fit the model ({len(problems)} problem(s)):\n  "
                              + "\n  ".join(problems))
    assign(model, state, updates)


# ---------------------------------------------------------------------------------------------
# Command line: python -m dualattn.interop.convert --config C IN OUT

USAGE = """\
python -m dualattn.interop.convert --config CONFIG IN OUT

  IN a run's workdir, OUT a .safetensors or .pth file: the run's best checkpoint (or
      --checkpoint=latest) as a state dict of the PyTorch twin
      (dualattn.interop.torch_model.TorchReIDNet, strict=True).
  IN a .pth/.pt/.bin/.safetensors state dict of the twin (a PyTorch ReID model in its names),
      OUT a new workdir: our checkpoint of it, at step 0, as both `best` and `latest`, so that
      `python -m dualattn.evaluate --workdir OUT` scores it and `python -m dualattn.train
      --workdir OUT` fine-tunes it. ImageNet backbones need no conversion: pass them as
      --config.pretrained.

The model settings (config.model) must be those of the weights; the classifier size is read
from them."""

_TORCH_FILES = (".pth", ".pt", ".bin", ".safetensors")


def export_run(config, workdir: Path, out: Path, which: str = "best") -> int:
    """Write the run's ``which`` checkpoint as a twin state dict; returns its training step."""
    from dualattn import checkpoint, train
    from dualattn.pretrained import write_safetensors

    if out.suffix not in (".safetensors", ".pth"):
        raise ConversionError(f"{out}: write a .safetensors or .pth file")
    ckpt = checkpoint.Checkpointer(workdir / "checkpoints")
    num_classes = ckpt.stored_num_classes(which)
    if num_classes is None:
        raise FileNotFoundError(f"no {which} checkpoint under {workdir}/checkpoints")
    graphdef, state, _ = train.create_train_state(config, num_classes, 1, load_pretrained=False)
    restore = ckpt.restore_best if which == "best" else ckpt.restore_latest
    state, meta = restore(state)
    model, _ = nnx.merge(graphdef, state)
    state_dict = flax_to_torch(model)
    if out.suffix == ".safetensors":
        write_safetensors(out, state_dict)
    else:
        import torch

        tmp = out.with_name(out.name + ".tmp")
        torch.save({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}, tmp)
        tmp.replace(out)
    return int(meta["step"])


def import_state_dict(config, path: Path, workdir: Path) -> int:
    """Write a twin state dict as step 0 of a new run in ``workdir``; returns its class count."""
    from dualattn import checkpoint, train
    from dualattn.pretrained import read_state_dict

    state_dict = read_state_dict(path)
    if "classifier.weight" not in state_dict:
        raise ConversionError(f"{path} has no classifier.weight, so it is not a full ReID model; "
                              f"for an ImageNet backbone use --config.pretrained={path}")
    ckpt = checkpoint.Checkpointer(workdir / "checkpoints")
    if ckpt.latest_step() is not None or ckpt.best.latest_step() is not None:
        raise ConversionError(f"{workdir} already holds checkpoints; convert into a new workdir")
    num_classes = int(state_dict["classifier.weight"].shape[0])
    graphdef, state, _ = train.create_train_state(config, num_classes, 1, load_pretrained=False)
    model, optimizer = nnx.merge(graphdef, state)
    torch_to_flax(state_dict, model)
    state = nnx.state((model, optimizer))
    source = str(path.absolute())
    ckpt.save_latest(0, state, {"step": 0, "best_mAP": -1.0, "converted_from": source})
    ckpt.save_best(0, state, {"converted_from": source})
    ckpt.wait()
    return num_classes


def main(argv):
    from absl import app

    from dualattn.checkpoint import CheckpointMismatchError
    from dualattn.pretrained import PretrainedWeightsError

    if len(argv) != 3 or FLAGS.config is None:
        raise app.UsageError(USAGE)
    src, dst = Path(argv[1]), Path(argv[2])
    try:
        if src.is_dir():
            step = export_run(FLAGS.config, src, dst, FLAGS.checkpoint)
            print(f"wrote {dst}: the {FLAGS.checkpoint} checkpoint of {src} (step {step})")
        elif src.suffix in _TORCH_FILES:
            num_classes = import_state_dict(FLAGS.config, src, dst)
            print(f"wrote {dst}/checkpoints: {src} as step 0 ({num_classes} classes)")
        else:
            raise ConversionError(f"{src} is neither a run's workdir nor a "
                                  f"{'/'.join(_TORCH_FILES)} file")
    except (ConversionError, PretrainedWeightsError, CheckpointMismatchError,
            FileNotFoundError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    from dualattn.train import parse_flags

    FLAGS = flags.FLAGS
    config_flags.DEFINE_config_file("config", None, "The model's configuration file.",
                                    lock_config=True)
    flags.DEFINE_enum("checkpoint", "best", ["best", "latest"], "Which checkpoint to export.")
    app.run(main, flags_parser=parse_flags)
