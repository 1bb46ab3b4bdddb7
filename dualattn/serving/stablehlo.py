"""A trained run as one StableHLO file that serves features with JAX alone.

The file is the Flax model through ``jax.export`` with a symbolic batch dimension, lowered for
CPU and CUDA, weights inside, serialized: ``jax.export.deserialize`` reads it back and
``.call(images)`` runs it, with no dualattn and no Flax. It takes uint8 ``(batch, height,
width, 3)`` RGB crops already resized to the run's input size and returns float32 ``(batch,
D)`` features, the test protocol inside (``dualattn.evaluation.evaluator.protocol_features``), in
the run's ``model.dtype``.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp

from dualattn.evaluation.evaluator import protocol_features
from dualattn.run.model import InferenceModel
from dualattn.run.workdir import atomic_write

# Where the file runs: jax.export lowers for each (CUDA needs no GPU to lower for).
PLATFORMS = ("cpu", "cuda")


def serving_function(config, model: InferenceModel):
    """uint8 ``(b, H, W, 3)`` crops -> float32 ``(b, D)`` test features, weights inside."""
    graphdef, state = model.graphdef, jax.device_get(model.state)

    def features(images):
        return protocol_features(graphdef, state, images, flip=config.eval.flip_test,
                             normalize_features=config.eval.normalize_features)

    return features


def export_stablehlo(config, model: InferenceModel, out: Path,
                     platforms=PLATFORMS) -> jax.export.Exported:
    """Write ``serving_function`` as a serialized ``jax.export.Exported`` to ``out``. The model
    must be built with plain Flax convolutions (``model.cpu_schedule`` off)."""
    batch = jax.export.symbolic_shape("batch")[0]
    spec = jax.ShapeDtypeStruct((batch, config.input.height, config.input.width, 3), jnp.uint8)
    exported = jax.export.export(jax.jit(serving_function(config, model)),
                                 platforms=platforms)(spec)
    atomic_write(out, bytes(exported.serialize()))
    return exported
