"""Test features of person crops already in memory, from a trained run: for trackers, search
services and notebooks.

    from dualattn import FeatureExtractor
    fx = FeatureExtractor("runs/market")            # the run's config.json and final model
    feats = fx(crops)                                # (N, D) float32, L2-normalised

A crop is a uint8 ``(h, w, 3)`` RGB array of any size (OpenCV gives BGR: pass
``crop[..., ::-1]``), a PIL image (an 8-bit mode: RGB, L, P, RGBA...; 16-bit and float
images are refused), an image path or an encoded image (bytes); ``crops`` is one crop, a list
of them, or a uint8 ``(N, h, w, 3)`` array. Each is resized to
the run's input size the way evaluation resizes (PIL bilinear on uint8) and goes through the
evaluator's own ``protocol_features``: the configured test feature, the flip average if
``eval.flip_test``, L2 normalisation if ``eval.normalize_features``. So ``fx(paths)`` equals
what ``dualattn.evaluate`` computes for those images.

Batches are padded up to the next *bucket* (1, 2, 4, ... up to ``max_batch``, each a multiple
of the device count) and larger inputs are split into ``max_batch`` chunks, so the network is
compiled once per bucket: a tracker sending 1-40 crops a frame compiles at most six programs,
all in its first frames. ``compiled_batch_sizes`` lists those compiled so far.
"""

from __future__ import annotations

import concurrent.futures
import functools
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from PIL import Image

from configs import saved
from data_pipeline.input_pipeline import EIGHT_BIT_MODES, resize_rgb
from dualattn.config_check import check_config
from dualattn.errors import UserError
from dualattn.evaluation.evaluator import protocol_features
from dualattn.run.mesh import data_parallel_shardings
from dualattn.run.model import load_model
from dualattn.run.workdir import RunDir

# Crops decoded or resized by threads at a time (PIL releases the GIL while it works).
_DECODE_THREADS = min(8, os.cpu_count() or 1)


class CropError(UserError, ValueError):
    """A crop that is not an image the extractor can read; the message says which and why."""


def run_config(workdir: str | Path):
    """The resolved config a training run saved in ``workdir``."""
    path = RunDir(workdir).config
    if not path.is_file():
        raise UserError(f"{path} does not exist: {workdir} is not a training run's workdir "
                        "(or pass its config as config=...)")
    return saved.get_config(str(path))


def buckets(max_batch: int, devices: int) -> tuple[int, ...]:
    """Batch sizes compiled for: powers of two up to ``max_batch``, rounded up to multiples
    of ``devices`` (each device gets an equal share)."""
    if max_batch < 1:
        raise UserError(f"max_batch must be at least 1, not {max_batch}")
    sizes = {devices * math.ceil(2**i / devices) for i in range(max_batch.bit_length())}
    sizes.add(devices * math.ceil(max_batch / devices))
    return tuple(sorted(s for s in sizes if s <= devices * math.ceil(max_batch / devices)))


def _as_image(crop: Any, index: int) -> Image.Image:
    """``crop`` as a PIL image of an 8-bit mode; anything else is refused, naming the crop."""
    if isinstance(crop, Image.Image):
        image = crop
    elif isinstance(crop, (str, os.PathLike, bytes)):
        try:
            with Image.open(io.BytesIO(crop) if isinstance(crop, bytes) else crop) as opened:
                opened.load()
                image = opened.copy()  # decoded, and outliving the file
        except (OSError, SyntaxError, ValueError) as e:
            what = "bytes" if isinstance(crop, bytes) else crop
            raise CropError(f"crop {index}: cannot read image {what} ({e})") from None
    elif isinstance(crop, np.ndarray):
        if crop.dtype != np.uint8 or crop.ndim != 3 or crop.shape[2] != 3 or 0 in crop.shape:
            raise CropError(f"crop {index}: expected a uint8 (h, w, 3) RGB array, got "
                            f"{crop.dtype} {crop.shape}")
        image = Image.fromarray(crop)
    else:
        raise CropError(f"crop {index}: expected a uint8 (h, w, 3) array, a PIL image, a path "
                        f"or encoded image bytes, got {type(crop).__name__}")
    if image.mode not in EIGHT_BIT_MODES:
        raise CropError(f"crop {index}: PIL mode {image.mode} is not an 8-bit image; convert it "
                        "to 8-bit RGB first (a 16-bit crop: scale it by 1/256)")
    return image


def _prepare(crop: Any, index: int, *, height: int, width: int) -> np.ndarray:
    return resize_rgb(_as_image(crop, index), height, width)


def as_crop_list(crops: Any) -> list:
    """``crops`` (one crop, a sequence of crops, or an (N, h, w, 3) array) as a list."""
    if isinstance(crops, np.ndarray) and crops.ndim == 4:
        return list(crops)
    if isinstance(crops, (np.ndarray, Image.Image, str, os.PathLike, bytes)):
        return [crops]
    if isinstance(crops, Sequence):
        return list(crops)
    raise CropError(f"expected a crop or a list of crops, got {type(crops).__name__}")


class FeatureExtractor:
    """A run's model as a function from crops to test features (see the module docstring).

    ``workdir``: a training run (its ``config.json`` and ``checkpoints/``); ``config``
    overrides the saved config (the model settings must be the checkpoint's);
    ``checkpoint``: ``"latest"`` (the final model) or ``"best"``; ``max_batch``: the largest
    batch run at once. One process: on a multi-host launch each process would need the
    others' batches, so use ``dualattn.evaluate`` there.
    """

    def __init__(self, workdir: str | Path, *, config=None, checkpoint: str = "latest",
                 max_batch: int = 64):
        if jax.process_count() > 1:
            raise UserError("FeatureExtractor runs in one process; start it without a "
                            "multi-process launch")
        self.config = run_config(workdir) if config is None else config
        check_config(self.config)
        model = load_model(self.config, workdir, checkpoint)
        self.step = model.step
        self.height, self.width = self.config.input.height, self.config.input.width
        self._sharding, _ = data_parallel_shardings()
        self.buckets = buckets(max_batch, jax.device_count())
        self.compiled_batch_sizes: list[int] = []
        self._state = model.state
        protocol = functools.partial(protocol_features, model.graphdef,
                                     flip=self.config.eval.flip_test,
                                     normalize_features=self.config.eval.normalize_features)

        def features(state, images):
            self.compiled_batch_sizes.append(images.shape[0])  # runs when jit traces
            return protocol(state, images)

        self._features = jax.jit(features)
        example = jax.ShapeDtypeStruct((1, self.height, self.width, 3), np.uint8)
        self.dim = int(jax.eval_shape(protocol, model.state, example).shape[1])

    def preprocess(self, crops: Any) -> np.ndarray:
        """``crops`` as the uint8 ``(N, height, width, 3)`` batch the network reads."""
        return self._preprocess(as_crop_list(crops), 0)

    def _preprocess(self, crops: list, first: int) -> np.ndarray:
        prepare = functools.partial(_prepare, height=self.height, width=self.width)
        indices = range(first, first + len(crops))
        if len(crops) < 2 * _DECODE_THREADS:
            images = list(map(prepare, crops, indices))
        else:
            with concurrent.futures.ThreadPoolExecutor(_DECODE_THREADS) as pool:
                images = list(pool.map(prepare, crops, indices))
        if not images:
            return np.zeros((0, self.height, self.width, 3), np.uint8)
        return np.stack(images)

    def __call__(self, crops: Any) -> np.ndarray:
        """Test features of ``crops``: float32 ``(N, D)``, in order. Crops are prepared a
        chunk at a time, while the previous chunk runs on the devices."""
        crops, chunk = as_crop_list(crops), self.buckets[-1]
        outputs = [self._run(self._preprocess(crops[i:i + chunk], i))
                   for i in range(0, len(crops), chunk)]
        if not outputs:
            return np.zeros((0, self.dim), np.float32)
        return np.concatenate([np.asarray(o)[:n] for o, n in outputs])

    def _run(self, images: np.ndarray) -> tuple[jax.Array, int]:
        """Dispatch one chunk, padded to its bucket (repeating its last crop); the result is
        not waited for, so the next chunk is prepared while this one runs."""
        n = len(images)
        size = next(b for b in self.buckets if b >= n)
        if size > n:
            images = np.concatenate([images, np.repeat(images[-1:], size - n, axis=0)])
        return self._features(self._state, jax.device_put(images, self._sharding)), n
