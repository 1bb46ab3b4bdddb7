"""A run's TensorBoard files, written through tensorboardX (no TensorFlow, no tensorboard):
scalars, figures and the run's hyperparameters.

A resumed run purges what the interrupted one logged after the checkpoint it resumes from:
the first event of the new file is a ``SessionLog.START`` at ``purge_step``, and TensorBoard
drops every earlier event at that step or later, so the event files tell the same story as
``metrics.jsonl`` (which is truncated the same way).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tensorboardX import SummaryWriter as _Writer
from tensorboardX.summary import hparams as _hparams


def flat_hparams(tree: dict[str, Any], prefix: str = "") -> dict[str, bool | int | float | str]:
    """A nested config dict as ``{"optim.lr": 0.00035, ...}``; values TensorBoard's hparams
    plugin cannot hold (tuples, None) as their text."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_hparams(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = str(value)
    return out


class SummaryWriter:
    """Event files in ``logdir``. ``purge_step``: a resumed run's first new step (events the
    previous run logged at that step or later are discarded by TensorBoard)."""

    def __init__(self, logdir: str | Path, purge_step: int | None = None):
        Path(logdir).mkdir(parents=True, exist_ok=True)
        # tensorboardX names files by the second and host, and would write over a file
        # opened in the same second (a quick resume); nanoseconds keep names unique and in
        # the order TensorBoard reads them.
        self._writer = _Writer(str(logdir), purge_step=purge_step, flush_secs=30,
                               filename_suffix=f".{time.time_ns()}")

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self._writer.add_scalar(tag, float(value), step)
        self._writer.flush()

    def image(self, step: int, tag: str, image: Image.Image) -> None:
        self._writer.add_image(tag, np.asarray(image.convert("RGB")), step, dataformats="HWC")
        self._writer.flush()

    def hparams(self, values: dict[str, bool | int | float | str], metrics: list[str]) -> None:
        """The run's settings for TensorBoard's HPARAMS tab, compared across runs on the
        ``metrics`` scalar tags this run logs (e.g. ``eval/mAP``)."""
        experiment, session_start, _ = _hparams(values, {tag: 0.0 for tag in metrics})
        writer = self._writer._get_file_writer()
        writer.add_summary(experiment)  # the metric values come from the run's own scalars
        writer.add_summary(session_start)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
