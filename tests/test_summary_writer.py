import pytest

from dualattn.summary_writer import SummaryWriter, crc32c


def test_crc32c_check_value():
    assert crc32c(b"123456789") == 0xE3069283  # the standard CRC-32C check value


def test_tensorboard_reads_our_scalars(tmp_path):
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator")
    writer = SummaryWriter(tmp_path)
    writer.scalars(1, {"train/loss": 2.5, "lr": 3.5e-4})
    writer.scalars(20, {"train/loss": 1.25})
    writer.scalars(2**40, {"eval/mAP": 0.8})  # large steps need multi-byte varints
    writer.close()
    acc = event_accumulator.EventAccumulator(str(tmp_path))
    acc.Reload()
    assert sorted(acc.Tags()["scalars"]) == ["eval/mAP", "lr", "train/loss"]
    loss = acc.Scalars("train/loss")
    assert [(e.step, e.value) for e in loss] == [(1, 2.5), (20, 1.25)]
    assert acc.Scalars("lr")[0].value == pytest.approx(3.5e-4)
    assert acc.Scalars("eval/mAP")[0].step == 2**40
