"""A run's model and optimizer: built from the config, started from ImageNet weights, restored
from a workdir for training (both) or inference (the model alone), and carried in and out of
PyTorch weight files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import ml_collections
from flax import nnx

from dualattn.models import ReIDNet, cpu_conv
from dualattn.run.checkpoint import Checkpointer, CheckpointNotFoundError
from dualattn.run.mesh import data_parallel_shardings
from dualattn.run.workdir import RunDir
from dualattn.training.optim import create_optimizer, learning_rate_schedule
from dualattn.weights.files import read_state_dict, write_state_dict
from dualattn.weights.imagenet import load_backbone_weights
from dualattn.weights.state_dict import ConversionError, flax_to_torch, torch_to_flax


def create_model(config: ml_collections.ConfigDict, num_classes: int) -> ReIDNet:
    """``config.model``'s network, with ``dualattn.models.cpu_conv``'s convolutions when
    ``model.cpu_schedule`` resolves to on (by default: on the CPU backend).

    Initialised as one compiled program: built op by op, the initialisers compile a hundred
    small programs (seconds on a CPU, each too small for the persistent compilation cache);
    jitted, it is one program, compiled once and cached across runs."""
    settings = config.model.to_dict()
    if cpu_conv.enabled(settings.pop("cpu_schedule", "auto")):
        settings["conv_general_dilated"] = cpu_conv.conv_general_dilated
    return nnx.jit(lambda: ReIDNet(num_classes, **settings, rngs=nnx.Rngs(config.seed)))()


def load_pretrained(model: ReIDNet, path: str) -> None:
    """``path``'s ImageNet weights into ``model``'s backbone, saying what was loaded."""
    counts = load_backbone_weights(model, path)
    if jax.process_index() == 0:
        print(f"loaded {counts['loaded']} backbone tensors from {path}")
        if counts["fresh_se"]:
            print(f"note: {path} has no SE weights, so the SE blocks start fresh "
                  f"({counts['fresh_se']} tensors; their gates near 0.5 halve every "
                  "pretrained residual branch at first); for the paper's ImageNet SE-ResNet-50 "
                  "start, pass timm's seresnet50 weights as --config.pretrained, or set "
                  "--config.model.use_se=False for the plain ResNet-50 rows")
        if counts["legacy_senet"]:
            print("note: a legacy (Caffe-style) SE-ResNet file: it strides in each block's "
                  "first 1x1 conv, ours in the 3x3, so these weights initialise rather than "
                  "reproduce that network")


def initial_model(config: ml_collections.ConfigDict, num_classes: int,
                  pretrained: bool = True) -> ReIDNet:
    """The network as training starts it: with ``config.pretrained``'s backbone weights if set
    (and ``pretrained``)."""
    model = create_model(config, num_classes)
    if config.pretrained and pretrained:
        load_pretrained(model, config.pretrained)
    return model


class TrainState(NamedTuple):
    """What the jitted train step works on: ``state`` holds the named parts ``{"model": ...,
    "optimizer": ...}`` (as checkpoints store them) and ``graphdef`` is their static
    structure; ``model_graphdef`` with ``state["model"]`` is the model alone."""
    graphdef: Any
    state: nnx.State
    schedule: Callable
    model_graphdef: Any


def create_train_state(config: ml_collections.ConfigDict, num_classes: int,
                       steps_per_epoch: int, pretrained: bool = True) -> TrainState:
    """``initial_model`` and its optimizer."""
    schedule = learning_rate_schedule(config, steps_per_epoch)
    model = initial_model(config, num_classes, pretrained)
    optimizer = nnx.Optimizer(model, create_optimizer(config, schedule), wrt=nnx.Param)
    graphdef, state = nnx.split({"model": model, "optimizer": optimizer})
    return TrainState(graphdef, state, schedule, nnx.graphdef(model))


class InferenceModel(NamedTuple):
    """A model ready for the jitted feature extractor: the training step its variables were
    saved at (0 for an untrained network), its graphdef and its (replicated) variables."""
    step: int
    graphdef: Any
    state: Any


def _replicated(tree):
    _, replicated = data_parallel_shardings()
    return jax.device_put(tree, replicated)


def load_model(config: ml_collections.ConfigDict, workdir: str | Path,
               which: str = "latest") -> InferenceModel:
    """The model of a run's ``which`` checkpoint ("best" or "latest"), without its optimizer.

    The classifier size comes from the checkpoint, so a model trained on another dataset (or
    converted from PyTorch) loads too; the classifier plays no part in testing."""
    run = RunDir(workdir)
    # Checked before the Checkpointer, which would create the (perhaps misspelt) folders.
    if not run.checkpoint_steps(which):
        raise CheckpointNotFoundError(
            f"no {which} checkpoint under {run.checkpoints}; train the run first (or pass the "
            "workdir of one that has)")
    ckpt = Checkpointer(run)
    num_classes = int(ckpt.metadata(which)["num_classes"])
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: create_model(config, num_classes)))
    _, replicated = data_parallel_shardings()
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype,
                                                           sharding=replicated), abstract)
    state, meta = ckpt.restore_model(which, abstract)
    return InferenceModel(int(meta["step"]), graphdef, state)


def untrained_model(config: ml_collections.ConfigDict, num_classes: int) -> InferenceModel:
    """``initial_model``, replicated for the feature extractor: a baseline."""
    graphdef, state = nnx.split(initial_model(config, num_classes))
    return InferenceModel(0, graphdef, _replicated(state))


# ---------------------------------------------------------------------------------------------
# PyTorch weight files


def export_weights(config, workdir: str | Path, out: Path, which: str = "latest") -> int:
    """Write the run's ``which`` checkpoint as a state dict of the PyTorch twin; returns its
    training step."""
    if out.suffix not in (".safetensors", ".pth"):
        raise ConversionError(f"{out}: write a .safetensors or .pth file")
    model = load_model(config, workdir, which)
    write_state_dict(out, flax_to_torch(nnx.merge(model.graphdef, model.state)))
    return model.step


def import_weights(config, path: Path, workdir: str | Path) -> int:
    """Write a twin state dict as step 0 of a new run in ``workdir`` (both its latest and its
    best checkpoint); returns its class count."""
    state_dict = read_state_dict(path)
    if "classifier.weight" not in state_dict:
        raise ConversionError(f"{path} has no classifier.weight, so it is not a full ReID "
                              f"model; for an ImageNet backbone use --config.pretrained={path}")
    run = RunDir(workdir)
    if run.checkpoint_steps("latest") or run.checkpoint_steps("best"):
        raise ConversionError(f"{workdir} already holds checkpoints; convert into a new workdir")
    num_classes = int(state_dict["classifier.weight"].shape[0])
    train = create_train_state(config, num_classes, 1, pretrained=False)
    parts = nnx.merge(train.graphdef, train.state)
    torch_to_flax(state_dict, parts["model"])
    state = nnx.state(parts)
    meta = {"converted_from": str(path.absolute()), "num_classes": num_classes}
    ckpt = Checkpointer(run)
    ckpt.save_latest(0, state, {"step": 0, "best_mAP": -1.0, **meta})
    ckpt.save_best(0, state, meta)
    ckpt.wait()
    return num_classes
