import numpy as np
import pytest
from PIL import Image

from data_pipeline import synthetic
from data_pipeline.datasets.layouts import DUKEMTMC_REID, MARKET1501


def small(out, **kw):
    return synthetic.generate(out, train_ids=6, test_ids=5, cameras=3, distractors=4, junk=3, **kw)


def test_market_layout_names_parse_and_counts_add_up(tmp_path):
    counts = small(tmp_path)
    for split_dir, n in counts.items():
        files = sorted((tmp_path / split_dir).glob("*.jpg"))
        assert len(files) == n > 0
        assert all(MARKET1501.pattern.match(f.name) for f in files)
    gallery = [f.name for f in (tmp_path / "bounding_box_test").glob("*.jpg")]
    assert sum(n.startswith("0000_") for n in gallery) == 4
    assert sum(n.startswith("-1_") for n in gallery) == 3
    train_pids = {f.name[:4] for f in (tmp_path / "bounding_box_train").glob("*.jpg")}
    query_pids = {f.name[:4] for f in (tmp_path / "query").glob("*.jpg")}
    assert len(train_pids) == 6 and len(query_pids) == 5 and not train_pids & query_pids


def test_duke_layout_names_parse(tmp_path):
    small(tmp_path, layout="dukemtmc")
    files = list(tmp_path.glob("*/*.jpg"))
    assert files and all(DUKEMTMC_REID.pattern.match(f.name) for f in files)


def test_deterministic_per_seed(tmp_path):
    small(tmp_path / "a", seed=3)
    small(tmp_path / "b", seed=3)
    small(tmp_path / "c", seed=4)
    a = {f.relative_to(tmp_path / "a"): f.read_bytes() for f in (tmp_path / "a").rglob("*.jpg")}
    b = {f.relative_to(tmp_path / "b"): f.read_bytes() for f in (tmp_path / "b").rglob("*.jpg")}
    c = {f.relative_to(tmp_path / "c"): f.read_bytes() for f in (tmp_path / "c").rglob("*.jpg")}
    assert a == b and a != c


def test_images_are_market_sized_and_an_identity_looks_alike_across_cameras(tmp_path):
    small(tmp_path)
    files = sorted((tmp_path / "bounding_box_train").glob("*.jpg"))
    imgs = {f.name: np.asarray(Image.open(f), np.float32) for f in files}
    assert all(img.shape == (128, 64, 3) for img in imgs.values())
    # Centre (torso) colour: closer within an identity than across identities, on average.
    centre = {n: img[45:65, 26:38].mean((0, 1)) for n, img in imgs.items()}
    same, diff = [], []
    names = list(centre)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            (same if a[:4] == b[:4] else diff).append(np.linalg.norm(centre[a] - centre[b]))
    assert np.mean(same) < np.mean(diff)


def test_bad_arguments_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="layout"):
        synthetic.generate(tmp_path, layout="cuhk")
    with pytest.raises(ValueError, match="cameras"):
        synthetic.generate(tmp_path, cameras=1)
