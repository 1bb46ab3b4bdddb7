"""TensorBoard files through tensorboardX, read back by TensorBoard's own event reader."""

import io

import numpy as np
import pytest
from PIL import Image

from dualattn.training.tensorboard import SummaryWriter, flat_hparams

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def read(logdir):
    acc = event_accumulator.EventAccumulator(str(logdir), size_guidance={"images": 0})
    acc.Reload()
    return acc


def test_tensorboard_reads_scalars_images_and_hparams(tmp_path):
    writer = SummaryWriter(tmp_path)
    writer.hparams(flat_hparams({"optim": {"lr": 3.5e-4, "epochs": 120},
                                 "model": {"stage_sizes": (3, 4, 6, 3), "use_se": True}}),
                   ["eval/mAP"])
    writer.scalars(1, {"train/loss": 2.5, "lr": 3.5e-4})
    writer.scalars(20, {"train/loss": 1.25})
    writer.scalars(2**40, {"eval/mAP": 0.8})  # large steps need multi-byte varints
    picture = np.zeros((30, 20, 3), np.uint8)
    picture[:, :10] = (255, 0, 0)
    writer.image(20, "eval/ranked_lists", Image.fromarray(picture))
    writer.close()
    acc = read(tmp_path)
    assert sorted(acc.Tags()["scalars"]) == ["eval/mAP", "lr", "train/loss"]
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(1, 2.5), (20, 1.25)]
    assert acc.Scalars("lr")[0].value == pytest.approx(3.5e-4)
    assert acc.Scalars("eval/mAP")[0].step == 2**40
    (event,) = acc.Images("eval/ranked_lists")
    assert (event.step, event.width, event.height) == (20, 20, 30)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(event.encoded_image_string))),
                                  picture)
    hparams = acc.PluginTagToContent("hparams")
    assert "_hparams_/experiment" in hparams and "_hparams_/session_start_info" in hparams
    assert b"optim.lr" in hparams["_hparams_/session_start_info"]
    assert b"(3, 4, 6, 3)" in hparams["_hparams_/session_start_info"]


def test_a_resumed_run_replaces_what_the_interrupted_one_logged_after_its_checkpoint(tmp_path):
    first = SummaryWriter(tmp_path)
    for step in range(1, 6):  # killed at step 5, its checkpoint is at step 2
        first.scalars(step, {"train/loss": float(step)})
    first.close()
    resumed = SummaryWriter(tmp_path, purge_step=3)
    for step in range(3, 7):
        resumed.scalars(step, {"train/loss": 10.0 + step})
    resumed.close()
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2
    loss = read(tmp_path).Scalars("train/loss")
    assert [(e.step, e.value) for e in loss] == [(1, 1), (2, 2), (3, 13), (4, 14), (5, 15),
                                                 (6, 16)]
