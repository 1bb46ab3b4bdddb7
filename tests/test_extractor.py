"""FeatureExtractor: crops in memory (arrays of any size, PIL images, paths, bytes) give the
features evaluation gives, one compiled program per batch-size bucket."""

import io

import numpy as np
import pytest
from PIL import Image

import dualattn
from dualattn.errors import UserError
from dualattn.serving.extractor import CropError, FeatureExtractor, buckets

# Device-dependent: run on GPUs by benchmarks.gpu_check (pytest -m gpu).
pytestmark = pytest.mark.gpu


def test_buckets_are_powers_of_two_shared_equally_by_the_devices():
    assert buckets(64, 1) == (1, 2, 4, 8, 16, 32, 64)
    assert buckets(40, 1) == (1, 2, 4, 8, 16, 32, 40)
    assert buckets(16, 3) == (3, 6, 9, 18)
    with pytest.raises(UserError, match="max_batch"):
        buckets(0, 1)


@pytest.fixture(scope="module")
def crops(data_paths, trained_run):
    """Eleven query crops of the tiny run's dataset: paths, and their decoded arrays."""
    paths = sorted((data_paths[0] / "query").glob("*.jpg"))[:11]
    return paths, [np.asarray(Image.open(p).convert("RGB")) for p in paths]


def test_every_kind_of_crop_gives_the_same_features(trained_run, crops):
    _, run = trained_run
    paths, arrays = crops
    extract = dualattn.FeatureExtractor(run)  # the package's lazy name for the class
    from_paths = extract(paths)
    assert from_paths.shape == (len(paths), extract.dim) and from_paths.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(from_paths, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(extract(arrays), from_paths, atol=1e-6)
    np.testing.assert_allclose(extract([Image.fromarray(a) for a in arrays]), from_paths,
                               atol=1e-6)
    np.testing.assert_allclose(extract([str(p) for p in paths]), from_paths, atol=1e-6)
    np.testing.assert_allclose(extract([p.read_bytes() for p in paths]), from_paths, atol=1e-6)
    # One crop alone, a batch array, a greyscale PIL image, a crop of another size.
    np.testing.assert_allclose(extract(arrays[3]), from_paths[3:4], atol=1e-5)
    np.testing.assert_allclose(extract(np.stack(arrays[:2])), from_paths[:2], atol=1e-5)
    grey = Image.fromarray(arrays[0]).convert("L")
    np.testing.assert_allclose(extract(grey), extract(np.asarray(grey.convert("RGB"))),
                               atol=1e-6)
    big = np.asarray(Image.fromarray(arrays[0]).resize((97, 203)))
    assert extract(big).shape == (1, extract.dim)
    assert extract([]).shape == (0, extract.dim)


def test_one_compilation_per_bucket_however_often_it_is_called(trained_run, crops):
    _, run = trained_run
    _, arrays = crops
    extract = FeatureExtractor(run, max_batch=8)
    assert extract.buckets == (1, 2, 4, 8)
    first = extract(arrays[:3])  # padded to 4
    for n in (4, 3, 4):
        extract(arrays[:n])
    assert extract.compiled_batch_sizes == [4]
    np.testing.assert_allclose(extract(arrays[:3]), first, atol=0)
    many = extract(arrays * 2)  # 22 crops: chunks of 8, 8 and 6 (padded to 8)
    assert extract.compiled_batch_sizes == [4, 8]
    np.testing.assert_allclose(many[:11], many[11:], atol=1e-6)
    np.testing.assert_allclose(many[:3], first, atol=1e-5)


def test_crops_it_cannot_read_are_named(trained_run, tmp_path):
    _, run = trained_run
    extract = FeatureExtractor(run, max_batch=2)
    good = np.zeros((20, 10, 3), np.uint8)
    cases = [([good, np.zeros((20, 10, 3), np.float32)], r"crop 1: expected a uint8 \(h, w, 3\)"),
             ([good, good, np.zeros((20, 10), np.uint8)], r"crop 2: expected a uint8"),
             ([tmp_path / "missing.jpg"], r"crop 0: cannot read image .*missing\.jpg"),
             ([b"not an image"], r"crop 0: cannot read image bytes"),
             ([3.5], r"crop 0: expected .* got float"),
             (42, r"expected a crop or a list of crops, got int")]
    # 16-bit and float images: PIL's conversion to RGB would clip them, not rescale them.
    sixteen = Image.fromarray(np.full((20, 10), 40000, np.uint16))
    assert sixteen.mode.startswith("I;16")
    sixteen.save(tmp_path / "depth.png")
    cases += [([good, sixteen], r"crop 1: PIL mode I;16 is not an 8-bit image"),
              ([Image.fromarray(np.ones((20, 10), np.float32))], r"crop 0: PIL mode F is not"),
              ([tmp_path / "depth.png"], r"crop 0: PIL mode I;16 is not an 8-bit image")]
    for crops, message in cases:
        with pytest.raises(CropError, match=message):
            extract(crops)
    buffer = io.BytesIO()
    Image.fromarray(good).save(buffer, format="PNG")
    assert extract([buffer.getvalue()]).shape == (1, extract.dim)


def test_a_folder_that_is_not_a_run_is_one_clear_error(tmp_path):
    with pytest.raises(UserError, match=r"config\.json does not exist.*not a training run"):
        FeatureExtractor(tmp_path)
