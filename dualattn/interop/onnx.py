"""A run's model as an ONNX file that serves: uint8 crops in, test features out.

The route is the PyTorch twin (``dualattn.interop.torch_model``) carrying the run's weights,
wrapped so the whole test protocol is in the graph, exported by ``torch.onnx.export``'s
``torch.export``-based exporter (it needs the ``onnx`` and ``onnxscript`` packages):

    input  "images":   uint8 (batch, height, width, 3), RGB, NHWC, already resized to the
                       run's input size; batch is dynamic
    output "features": float32 (batch, D): the run's test feature, averaged with the mirror
                       image's if ``eval.flip_test``, L2-normalised if ``eval.normalize_features``

The twin computes in float32 whatever ``model.dtype`` the run trained with.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import jax
import numpy as np
import torch
from flax import nnx

from dualattn.interop.torch_model import TorchReIDNet, twin_from_state_dict
from dualattn.models.preprocess import IMAGENET_MEAN, IMAGENET_STD
from dualattn.run.workdir import atomic_output
from dualattn.weights.state_dict import flax_to_torch

OPSET = 18  # the opset the exporter writes; onnxruntime 1.16 and later run it


class ServedNet(torch.nn.Module):
    """The twin between raw crops and finished features: normalisation, test feature, optional
    flip average and L2 normalisation, as ``dualattn.evaluation.evaluator.protocol_features``
    computes them."""

    def __init__(self, net: TorchReIDNet, flip: bool, normalize_features: bool):
        super().__init__()
        self.net, self.flip, self.normalize_features = net.eval(), flip, normalize_features
        self.register_buffer("mean", 255 * torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", 255 * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.permute(0, 3, 1, 2).float() - self.mean) / self.std
        feats = self.net(x)
        if self.flip:
            feats = (feats + self.net(torch.flip(x, dims=(3,)))) / 2
        if self.normalize_features:
            feats = feats / feats.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return feats


def served_twin(state_dict: dict[str, np.ndarray], config) -> ServedNet:
    """``ServedNet`` around the twin of ``config.model`` carrying ``state_dict``."""
    twin = twin_from_state_dict(state_dict, config.model.to_dict())
    return ServedNet(twin, config.eval.flip_test, config.eval.normalize_features).eval()


def export_onnx(config, model, out: Path) -> None:
    """Write the twin of ``model`` (an ``InferenceModel``: ``graphdef`` and ``state``) with its
    weights as ONNX to ``out``."""
    state_dict = flax_to_torch(nnx.merge(model.graphdef, jax.device_get(model.state)))
    served = served_twin(state_dict, config)
    example = torch.zeros((2, config.input.height, config.input.width, 3), dtype=torch.uint8)
    # The exporter reports each of its passes on stdout, and warns about absent torchvision
    # ops and deprecated internals; none of it concerns this graph.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            _quiet_logger("torch.onnx"), torch.no_grad(), atomic_output(out) as tmp:
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            served, (example,), input_names=["images"], output_names=["features"],
            opset_version=OPSET, dynamo=True, verbose=False,
            dynamic_shapes=({0: torch.export.Dim("batch")},))
        program.save(str(tmp))


@contextlib.contextmanager
def _quiet_logger(name: str):
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
