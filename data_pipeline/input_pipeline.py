"""grain pipelines: PK-sampled training batches and ordered, padded query/gallery batches.

Each element is one *per-process* batch of uint8 images resized to the model's input size:
the CPU side only decodes and resizes; augmentation runs on the accelerator
(``dualattn.training.augment``). Elements are indexed by step, so a resumed run starts at its step
with nothing else to restore, and every process reads only its own slice of each global
batch (``process_share``). With ``num_workers > 0`` batches are built in grain worker
processes; the loaders below are plain picklable classes for that reason.
"""

from __future__ import annotations

import io
import math
import signal
from collections.abc import Sequence

import grain
import numpy as np
from absl import flags
from PIL import Image

from data_pipeline.sampler import PKSampler, process_share

# PIL modes whose conversion to 8-bit RGB keeps the image's meaning. 16-bit and 32-bit
# integer (I;16, I) and float (F) images are refused: PIL's conversion clips them to 0-255,
# which turns a 16-bit crop into a nearly white one rather than a darker copy of itself.
EIGHT_BIT_MODES = ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK",
                   "YCbCr", "LAB", "HSV")


def resize_rgb(image: Image.Image, height: int, width: int) -> np.ndarray:
    """A PIL image of an 8-bit mode (``EIGHT_BIT_MODES``) -> uint8 (height, width, 3) RGB,
    bilinear (torchvision's Resize default): how every image reaches the network."""
    if image.mode not in EIGHT_BIT_MODES:
        raise ValueError(f"PIL mode {image.mode} is not an 8-bit image; convert it to 8-bit RGB "
                         "first (e.g. scale a 16-bit crop by 1/256)")
    image = image.convert("RGB")
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def decode_resize(jpeg: bytes, height: int, width: int) -> np.ndarray:
    """JPEG bytes -> ``resize_rgb``."""
    with Image.open(io.BytesIO(jpeg)) as img:
        return resize_rgb(img, height, width)


class _LoadTrainBatch:
    def __init__(self, source, sampler: PKSampler, image_size: Sequence[int],
                 process_index: int, process_count: int):
        self.source, self.sampler = source, sampler
        self.height, self.width = image_size
        self.process_index, self.process_count = process_index, process_count

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        indices = process_share(self.sampler.batch(int(step)), self.process_index,
                                self.process_count)
        records = [self.source[int(i)] for i in indices]
        return {
            "image": np.stack([decode_resize(r["image"], self.height, self.width)
                               for r in records]),
            "label": np.array([r["label"] for r in records], np.int32),
        }


class _LoadEvalBatch:
    def __init__(self, source, batch_size: int, image_size: Sequence[int], process_index: int,
                 process_count: int):
        self.source, self.batch_size = source, batch_size
        self.height, self.width = image_size
        self.process_index, self.process_count = process_index, process_count

    def __call__(self, batch_index: int) -> dict[str, np.ndarray]:
        n = len(self.source)
        global_idx = np.arange(batch_index * self.batch_size, (batch_index + 1) * self.batch_size)
        idx = process_share(global_idx, self.process_index, self.process_count)
        mask = idx < n
        idx = np.where(mask, idx, n - 1)  # pad with a real image; masked out downstream
        records = [self.source[int(i)] for i in idx]
        return {
            "image": np.stack([decode_resize(r["image"], self.height, self.width)
                               for r in records]),
            "pid": np.array([r["pid"] for r in records], np.int32),
            "camid": np.array([r["camid"] for r in records], np.int32),
            "index": idx.astype(np.int64),
            "mask": mask,
        }


def _ignore_interrupts(_worker_index: int, _worker_count: int) -> None:
    """Ctrl-C reaches every process of the terminal's group; workers leave it to the trainer,
    which saves a checkpoint and stops (a worker's KeyboardInterrupt would be re-raised in the
    trainer mid-batch instead)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _to_iter(ds: grain.MapDataset, num_workers: int) -> grain.IterDataset:
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
    if num_workers > 0:
        # grain reads absl flags when it starts workers; outside an absl app (tests, notebooks,
        # benchmarks) nothing has parsed them, so accept the defaults.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers,
                                                         per_worker_buffer_size=2),
                            worker_init_fn=_ignore_interrupts)
    return it


def train_dataset(source, sampler: PKSampler, *, image_size: Sequence[int], start_step: int,
                  num_steps: int, process_index: int = 0, process_count: int = 1,
                  num_workers: int = 0) -> grain.IterDataset:
    """Batches for steps ``start_step .. num_steps - 1``: ``{"image": uint8 (b,H,W,3),
    "label": int32 (b,)}`` with ``b = P*K / process_count``."""
    if not 0 <= start_step <= num_steps:
        raise ValueError(f"start_step {start_step} outside 0..{num_steps}")
    steps = grain.MapDataset.range(start_step, num_steps)
    loader = _LoadTrainBatch(source, sampler, image_size, process_index, process_count)
    return _to_iter(steps.map(loader), num_workers)


def eval_dataset(source, *, batch_size: int, image_size: Sequence[int], process_index: int = 0,
                 process_count: int = 1, num_workers: int = 0) -> grain.IterDataset:
    """Every record of ``source`` once, in order, in global batches of ``batch_size``.

    The last batch is padded with copies of the final record and marked by ``mask``; ``index``
    gives each row's record index so features can be put back in dataset order.
    """
    num_batches = math.ceil(len(source) / batch_size)
    loader = _LoadEvalBatch(source, batch_size, image_size, process_index, process_count)
    return _to_iter(grain.MapDataset.range(num_batches).map(loader), num_workers)
