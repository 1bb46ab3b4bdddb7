import io

import numpy as np
import pytest
from PIL import Image

from data_pipeline.datasets import read_columns
from data_pipeline.input_pipeline import decode_resize, eval_dataset, train_dataset
from data_pipeline.sampler import PKSampler

SIZE = (48, 24)


@pytest.fixture(scope="module")
def train_labels(market_sources):
    (labels,) = read_columns(market_sources["train"], "label")
    return labels


def test_decode_resize():
    buf = io.BytesIO()
    Image.fromarray(np.full((128, 64, 3), 90, np.uint8)).save(buf, format="JPEG")
    out = decode_resize(buf.getvalue(), 384, 128)
    assert out.shape == (384, 128, 3) and out.dtype == np.uint8
    assert abs(int(out.mean()) - 90) <= 2


def test_train_batches_follow_the_sampler(market_sources, train_labels):
    sampler = PKSampler(train_labels, p=3, k=2, seed=0)
    batches = list(train_dataset(market_sources["train"], sampler, image_size=SIZE,
                                 start_step=0, num_steps=4))
    assert len(batches) == 4
    for step, batch in enumerate(batches):
        assert batch["image"].shape == (6, *SIZE, 3) and batch["image"].dtype == np.uint8
        np.testing.assert_array_equal(batch["label"], train_labels[sampler.batch(step)])


def test_resuming_at_a_step_gives_the_same_batches(market_sources, train_labels):
    sampler = PKSampler(train_labels, p=3, k=2, seed=1)
    full = list(train_dataset(market_sources["train"], sampler, image_size=SIZE, start_step=0,
                              num_steps=6))
    resumed = list(train_dataset(market_sources["train"], sampler, image_size=SIZE,
                                 start_step=3, num_steps=6))
    for a, b in zip(full[3:], resumed, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])


def test_process_slices_cover_each_global_batch_exactly_once(market_sources, train_labels):
    sampler = PKSampler(train_labels, p=2, k=2, seed=2)
    whole = list(train_dataset(market_sources["train"], sampler, image_size=SIZE,
                               start_step=0, num_steps=3))
    parts = [list(train_dataset(market_sources["train"], sampler, image_size=SIZE,
                                start_step=0, num_steps=3, process_index=i, process_count=2))
             for i in range(2)]
    for step in range(3):
        joined = np.concatenate([parts[0][step]["image"], parts[1][step]["image"]])
        np.testing.assert_array_equal(joined, whole[step]["image"])


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_covers_every_record_once_in_order(market_sources, process_count):
    src = market_sources["gallery"]
    seen = []
    for i in range(process_count):
        for batch in eval_dataset(src, batch_size=8, image_size=SIZE, process_index=i,
                                  process_count=process_count):
            assert batch["image"].shape[0] == 8 // process_count
            seen.extend(batch["index"][batch["mask"]])
            np.testing.assert_array_equal(
                batch["pid"][batch["mask"]],
                [src[int(j)]["pid"] for j in batch["index"][batch["mask"]]])
    assert sorted(seen) == list(range(len(src)))


def test_worker_processes_give_the_same_batches(market_sources, train_labels):
    sampler = PKSampler(train_labels, p=3, k=2, seed=3)
    inline = list(train_dataset(market_sources["train"], sampler, image_size=SIZE,
                                start_step=0, num_steps=3))
    workers = list(train_dataset(market_sources["train"], sampler, image_size=SIZE,
                                 start_step=0, num_steps=3, num_workers=1))
    for a, b in zip(inline, workers, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
