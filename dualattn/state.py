"""A run's model and optimizer: built from the config, started from ImageNet weights, and
restored from a workdir, for training (model and optimizer) or inference (the model alone)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import jax
import ml_collections
from flax import nnx

from dualattn import checkpoint, cpu_schedule
from dualattn.mesh import data_parallel_shardings
from dualattn.models import ReIDNet
from dualattn.optim import create_optimizer, learning_rate_schedule
from dualattn.pretrained import load_backbone_weights


def create_model(config: ml_collections.ConfigDict, num_classes: int) -> ReIDNet:
    """``config.model``'s network, with ``dualattn.cpu_schedule``'s convolutions when
    ``model.cpu_schedule`` resolves to on (by default: on the CPU backend).

    Initialised as one compiled program: built op by op, the initialisers compile a hundred
    small programs (seconds on a CPU, each too small for the persistent compilation cache);
    jitted, it is one program, compiled once and cached across runs."""
    settings = config.model.to_dict()
    if cpu_schedule.enabled(settings.pop("cpu_schedule", "auto")):
        settings["conv_general_dilated"] = cpu_schedule.conv_general_dilated
    return nnx.jit(lambda: ReIDNet(num_classes, **settings, rngs=nnx.Rngs(config.seed)))()


def load_pretrained(model: ReIDNet, path: str) -> None:
    """``path``'s ImageNet weights into ``model``'s backbone, saying what was loaded."""
    counts = load_backbone_weights(model, path)
    if jax.process_index() == 0:
        print(f"loaded {counts['loaded']} backbone tensors from {path}")
        if counts["fresh_se"]:
            print(f"note: {path} has no SE weights, so the SE blocks start fresh "
                  f"({counts['fresh_se']} tensors; their gates near 0.5 halve every pretrained "
                  "residual branch at first); for the paper's ImageNet SE-ResNet-50 start, pass "
                  "timm's seresnet50 weights as --config.pretrained, or set "
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


def create_train_state(config: ml_collections.ConfigDict, num_classes: int,
                       steps_per_epoch: int, pretrained: bool = True):
    """``initial_model`` and its optimizer as ``(graphdef, state, schedule)`` for the jitted
    steps."""
    schedule = learning_rate_schedule(config, steps_per_epoch)
    model = initial_model(config, num_classes, pretrained)
    optimizer = nnx.Optimizer(model, create_optimizer(config, schedule), wrt=nnx.Param)
    graphdef, state = nnx.split((model, optimizer))
    return graphdef, state, schedule


def model_part(graphdef, state) -> tuple[Any, Any]:
    """``(graphdef, state)`` of the model alone, from those of ``(model, optimizer)``."""
    model, _ = nnx.merge(graphdef, state)
    return nnx.split(model)


class InferenceModel(NamedTuple):
    """A model ready for the jitted feature extractor: its variables replicated over the
    devices, and the training step they were saved at (0 for an untrained network)."""
    step: int
    graphdef: Any
    state: Any


def load_model(config: ml_collections.ConfigDict, workdir: str | Path,
               which: str = "latest") -> InferenceModel:
    """The model of a run's ``which`` checkpoint ("best" or "latest"), without its optimizer.

    The classifier size comes from the checkpoint, so a model trained on another dataset (or
    converted from PyTorch) loads too; the classifier plays no part in testing."""
    folder = Path(workdir).absolute() / "checkpoints"
    # Checked before the Checkpointer, which would create the (perhaps misspelt) folders.
    ckpt = checkpoint.Checkpointer(folder) if (folder / which).is_dir() else None
    num_classes = ckpt.stored_num_classes(which) if ckpt else None
    if num_classes is None:
        raise checkpoint.CheckpointNotFoundError(
            f"no {which} checkpoint under {folder}; train the run first (or pass the workdir "
            "of one that has)")
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: create_model(config, num_classes)))
    _, replicated = data_parallel_shardings()
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype,
                                                           sharding=replicated), abstract)
    state, meta = ckpt.restore_model(which, abstract)
    return InferenceModel(int(meta["step"]), graphdef, state)


def untrained_model(config: ml_collections.ConfigDict, num_classes: int) -> InferenceModel:
    """``initial_model``, replicated for the feature extractor: a baseline."""
    graphdef, state = nnx.split(initial_model(config, num_classes))
    _, replicated = data_parallel_shardings()
    return InferenceModel(0, graphdef, jax.device_put(state, replicated))
