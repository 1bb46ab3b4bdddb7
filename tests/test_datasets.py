import numpy as np
import pytest

from data_pipeline import synthetic
from data_pipeline.datasets import DatasetLayoutError, data_sources, prepare
from data_pipeline.datasets.builders import Market1501


def split_column(source, key):
    return np.array([source[i][key] for i in range(len(source))])


@pytest.mark.filterwarnings("ignore:Market-1501 counts")
def test_market_builder_reads_the_layout(market_dir, tmp_path):
    sources = data_sources(prepare("market1501", market_dir, tmp_path, verbose=False))
    files = {d: len(list((market_dir / d).glob("*.jpg")))
             for d in ("bounding_box_train", "bounding_box_test", "query")}
    assert len(sources["train"]) == files["bounding_box_train"]
    assert len(sources["query"]) == files["query"]
    assert len(sources["gallery"]) == files["bounding_box_test"] - 3  # junk (-1) dropped
    gallery_pids = split_column(sources["gallery"], "pid")
    assert (gallery_pids == 0).sum() == 4  # distractors kept
    labels = split_column(sources["train"], "label")
    assert sorted(set(labels)) == list(range(6))
    pids = split_column(sources["train"], "pid")
    assert all(len(set(labels[pids == p])) == 1 for p in set(pids))
    assert set(split_column(sources["query"], "label")) == {-1}
    assert set(split_column(sources["train"], "camid")) <= {0, 1, 2}
    example = sources["train"][0]
    assert isinstance(example["image"], bytes) and example["image"][:2] == b"\xff\xd8"


@pytest.mark.filterwarnings("ignore:DukeMTMC-reID counts")
def test_duke_builder_reads_the_layout(tmp_path):
    synthetic.generate(tmp_path / "duke", layout="dukemtmc", train_ids=4, test_ids=3, cameras=3)
    sources = data_sources(prepare("dukemtmc_reid", tmp_path / "duke", tmp_path / "data",
                                   verbose=False))
    assert len(sources["train"]) == len(list((tmp_path / "duke/bounding_box_train").glob("*")))
    assert sorted(set(split_column(sources["train"], "label"))) == list(range(4))


@pytest.mark.filterwarnings("ignore:Market-1501 counts")
def test_prepare_runs_once_and_accepts_the_archive_parent(market_dir, tmp_path):
    parent = tmp_path / "unpacked"
    parent.mkdir()
    (parent / "Market-1501-v15.09.15").symlink_to(market_dir, target_is_directory=True)
    prepare("market1501", parent, tmp_path / "data", verbose=False)
    # A second run reuses the files without looking at the source folder.
    builder = prepare("market1501", tmp_path / "gone", tmp_path / "data", verbose=False)
    assert len(data_sources(builder)["query"]) > 0


def copy_of(market_dir, dest):
    import shutil
    shutil.copytree(market_dir, dest)
    return dest


def assert_nothing_prepared(data_dir):
    assert not Market1501(data_dir=str(data_dir), file_format="array_record").is_prepared()
    assert not list(data_dir.glob("market1501/1.0.0/*.array_record*"))


def test_missing_folder(tmp_path):
    with pytest.raises(DatasetLayoutError, match="does not exist.*bounding_box_train"):
        prepare("market1501", tmp_path / "nowhere", tmp_path / "data")
    assert_nothing_prepared(tmp_path / "data")


def test_wrong_layout_names_missing_folders(market_dir, tmp_path):
    src = copy_of(market_dir, tmp_path / "m")
    (src / "query").rename(src / "queries")
    with pytest.raises(DatasetLayoutError, match="missing query"):
        prepare("market1501", src, tmp_path / "data")


def test_no_images(tmp_path):
    for d in ("bounding_box_train", "bounding_box_test", "query"):
        (tmp_path / "m" / d).mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match="no usable images"):
        prepare("market1501", tmp_path / "m", tmp_path / "data")


def test_unparseable_names_are_listed(market_dir, tmp_path):
    src = copy_of(market_dir, tmp_path / "m")
    (src / "query" / "person_one.jpg").write_bytes(b"")
    (src / "query" / "Thumbs.db").write_bytes(b"ignored: not a .jpg")
    with pytest.raises(DatasetLayoutError, match=r"(?s)1 file name.*person_one\.jpg"):
        prepare("market1501", src, tmp_path / "data")
    assert_nothing_prepared(tmp_path / "data")


def test_corrupt_and_truncated_images_are_listed(market_dir, tmp_path):
    src = copy_of(market_dir, tmp_path / "m")
    victims = sorted((src / "bounding_box_train").glob("*.jpg"))[:2]
    victims[0].write_bytes(b"not a jpeg at all")
    victims[1].write_bytes(victims[1].read_bytes()[:300])  # truncated
    with pytest.raises(DatasetLayoutError, match="2 image") as err:
        prepare("market1501", src, tmp_path / "data")
    assert victims[0].name in str(err.value) and victims[1].name in str(err.value)
    assert_nothing_prepared(tmp_path / "data")


@pytest.mark.filterwarnings("ignore:Market-1501 counts")
def test_failure_while_writing_leaves_nothing_that_looks_complete(market_dir, tmp_path):
    from data_pipeline.datasets import layouts
    src = copy_of(market_dir, tmp_path / "m")
    records = layouts.scan(src, layouts.MARKET1501)
    sorted((src / "query").glob("*.jpg"))[-1].unlink()  # vanishes after the scan
    builder = Market1501(data_dir=str(tmp_path / "data"), file_format="array_record",
                         records=records)
    with pytest.raises(FileNotFoundError):
        builder.download_and_prepare()
    assert_nothing_prepared(tmp_path / "data")
    # A later run with an intact folder builds the dataset.
    sources = data_sources(prepare("market1501", market_dir, tmp_path / "data", verbose=False))
    assert len(sources["query"]) > 0


def test_unknown_dataset_name(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset"):
        prepare("market", tmp_path, tmp_path)
