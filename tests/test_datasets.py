import pytest

from data_pipeline import synthetic
from data_pipeline.datasets import DatasetLayoutError, data_sources, prepare, read_columns
from data_pipeline.datasets.builders import Market1501


def split_column(source, key):
    (column,) = read_columns(source, key)
    return column


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
    # A second run reuses the files, also once the source folder is gone.
    assert len(data_sources(prepare("market1501", parent, tmp_path / "data",
                                    verbose=False))["query"]) > 0
    parent.rename(tmp_path / "moved")
    builder = prepare("market1501", parent, tmp_path / "data", verbose=False)
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
    with pytest.raises(DatasetLayoutError, match=r"(?s)1 problem.*person_one\.jpg"):
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


def market_entries(market_dir, folder):
    """(path, pid, 1-based camera) of a generated Market folder, junk and distractors skipped."""
    from data_pipeline.datasets.layouts import MARKET1501
    out = []
    for path in sorted((market_dir / folder).glob("*.jpg")):
        m = MARKET1501.pattern.match(path.name)
        if int(m.group(1)) > 0:
            out.append((path, int(m.group(1)), int(m.group(2))))
    return out


def write_msmt17(market_dir, root, dirs=("train", "test")):
    """Re-lay a generated Market folder as MSMT17: pid folders, list files, camera in the name."""
    import shutil
    lists = {"list_train.txt": [], "list_val.txt": [], "list_query.txt": [],
             "list_gallery.txt": []}
    sources = (("bounding_box_train", dirs[0], None), ("query", dirs[1], "list_query.txt"),
               ("bounding_box_test", dirs[1], "list_gallery.txt"))
    for folder, image_dir, list_name in sources:
        for k, (path, pid, cam) in enumerate(market_entries(market_dir, folder)):
            rel = f"{pid:04d}/{pid:04d}_{k:03d}_{cam:02d}_0303morning_{k:04d}_0.jpg"
            (root / image_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, root / image_dir / rel)
            name = list_name or ("list_val.txt" if k % 5 == 0 else "list_train.txt")
            lists[name].append(f"{rel} {pid}")
    for name, lines in lists.items():
        (root / name).write_text("\n".join(lines) + "\n")
    return {n: len(v) for n, v in lists.items()}


@pytest.mark.filterwarnings("ignore:MSMT17 counts")
@pytest.mark.parametrize("dirs", [("train", "test"), ("mask_train_v2", "mask_test_v2")])
def test_msmt17_builder_reads_list_files_of_v1_and_v2(market_dir, tmp_path, dirs):
    counts = write_msmt17(market_dir, tmp_path / "MSMT17", dirs)
    sources = data_sources(prepare("msmt17", tmp_path / "MSMT17", tmp_path / "data",
                                   verbose=False))
    assert len(sources["train"]) == counts["list_train.txt"] + counts["list_val.txt"]
    assert len(sources["query"]) == counts["list_query.txt"]
    assert len(sources["gallery"]) == counts["list_gallery.txt"]
    expected_cams = {cam - 1 for _, _, cam in market_entries(market_dir, "query")}
    assert set(split_column(sources["query"], "camid")) == expected_cams
    assert sorted(set(split_column(sources["train"], "label"))) == list(range(6))


def assert_list_problems_named(name, root, list_file, line, missing, malformed, data_dir):
    """Lines ``line`` and ``line + 1`` (1-based) of ``list_file`` become an image that does not
    exist and a line that does not parse: ``prepare`` names both by file and line."""
    lines = (root / list_file).read_text().splitlines()
    lines[line - 1], lines[line] = missing, malformed
    (root / list_file).write_text("\n".join(lines))
    with pytest.raises(DatasetLayoutError, match=rf"(?s)2 problem.*{list_file}:{line}:.*does "
                                                 rf"not exist.*{list_file}:{line + 1}: expected"):
        prepare(name, root, data_dir)


def test_msmt17_list_problems_name_file_and_line(market_dir, tmp_path):
    root = tmp_path / "MSMT17"
    write_msmt17(market_dir, root)
    assert_list_problems_named("msmt17", root, "list_query.txt", 2,
                               "0001/missing_000_01_x_0001_0.jpg 1", "just-a-path.jpg",
                               tmp_path / "data")


@pytest.mark.filterwarnings("ignore:CUHK03-NP")
def test_cuhk03_np_builder_reads_png_folders(market_dir, tmp_path):
    from PIL import Image

    from data_pipeline.input_pipeline import decode_resize
    for folder in ("bounding_box_train", "query", "bounding_box_test"):
        out = tmp_path / "cuhk03-np" / "detected" / folder
        out.mkdir(parents=True)
        for k, (path, pid, cam) in enumerate(market_entries(market_dir, folder)):
            Image.open(path).save(out / f"{pid:04d}_c{cam}_{k}.png")
    sources = data_sources(prepare("cuhk03_np_detected", tmp_path / "cuhk03-np",
                                   tmp_path / "data", verbose=False))
    assert len(sources["query"]) == len(market_entries(market_dir, "query"))
    image = sources["train"][0]["image"]
    assert image[:4] == b"\x89PNG"
    assert decode_resize(image, 32, 16).shape == (32, 16, 3)
    with pytest.raises(DatasetLayoutError, match="labeled/bounding_box_train"):
        prepare("cuhk03_np_labeled", tmp_path / "cuhk03-np", tmp_path / "data2")


def write_custom(market_dir, root):
    """Re-lay a generated Market folder as a user's own dataset: any folders, three list files
    of 'path pid camid' with 0-based cameras and a PNG among the JPEGs."""
    import shutil

    from PIL import Image
    for split, folder in (("train", "bounding_box_train"), ("query", "query"),
                          ("gallery", "bounding_box_test")):
        lines = ["# path pid camid"]
        for k, (path, pid, cam) in enumerate(market_entries(market_dir, folder)):
            rel = f"images/{split}/person{pid}_{k}" + (".png" if k == 0 else ".jpg")
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            if k == 0:
                Image.open(path).save(root / rel)
            else:
                shutil.copy(path, root / rel)
            lines.append(f"{rel} {pid} {cam - 1}")
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")


def test_custom_list_layout_reads_a_users_own_dataset(market_dir, tmp_path):
    from data_pipeline.input_pipeline import decode_resize
    root = tmp_path / "mine"
    write_custom(market_dir, root)
    sources = data_sources(prepare("custom", root, tmp_path / "data", verbose=False))
    entries = market_entries(market_dir, "query")
    assert len(sources["query"]) == len(entries)
    paths, cams = read_columns(sources["query"], "path", "camid")
    index = {f"person{pid}_{k}": cam - 1 for k, (_, pid, cam) in enumerate(entries)}
    by_path = {str(p.decode() if isinstance(p, bytes) else p): c
               for p, c in zip(paths, cams, strict=True)}
    assert {p.rsplit("/", 1)[1].split(".")[0]: c for p, c in by_path.items()} == index
    assert sorted(set(split_column(sources["train"], "label"))) == list(range(6))
    png = next(i for i, p in enumerate(by_path) if p.endswith(".png"))
    assert decode_resize(sources["query"][png]["image"], 32, 16).shape == (32, 16, 3)


def test_custom_list_problems_name_file_and_line(market_dir, tmp_path):
    root = tmp_path / "mine"
    write_custom(market_dir, root)
    assert_list_problems_named("custom", root, "gallery.txt", 3, "images/gallery/nope.jpg 3 0",
                               "images/gallery/person1_1.jpg 3", tmp_path / "data")
    (root / "query.txt").unlink()
    with pytest.raises(DatasetLayoutError, match="query.txt"):
        prepare("custom", root, tmp_path / "data")


def test_prepared_files_are_never_reused_for_another_or_a_changed_folder(tmp_path):
    """Same data_dir, another root: refused, not silently served; the same root after its
    files changed: refused; the same root unchanged: reused."""
    import warnings

    first, second, data_dir = tmp_path / "first", tmp_path / "second", tmp_path / "tfds"
    for root, seed in ((first, 0), (second, 1)):
        synthetic.generate(root, train_ids=3, test_ids=3, cameras=2, distractors=0, junk=0,
                           seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # counts differ from the published Market-1501
        builder = prepare("market1501", first, data_dir, verbose=False)
    assert prepare("market1501", first, data_dir, verbose=False).data_dir == builder.data_dir
    with pytest.raises(DatasetLayoutError, match=(
            rf"dataset.root {second}: the prepared market1501 in .* holds the images of "
            rf"{first} \(\d+ files\); set dataset.data_dir to another folder")):
        prepare("market1501", second, data_dir, verbose=False)
    extra = next((first / "bounding_box_test").glob("*.jpg"))
    extra.with_name("0099_c1s1_000001_01.jpg").write_bytes(extra.read_bytes())
    with pytest.raises(DatasetLayoutError, match="prepared before the folder's files changed"):
        prepare("market1501", first, data_dir, verbose=False)


def test_image_extensions_are_read_in_any_case(market_dir, tmp_path):
    """Cameras and copy tools write .JPG as often as .jpg: both are the layout's images."""
    from data_pipeline.datasets import layouts
    src = copy_of(market_dir, tmp_path / "m")
    train = sorted((src / "bounding_box_train").glob("*.jpg"))
    for path in train[::3]:
        path.rename(path.with_suffix(".JPG"))
    records = layouts.scan(src, layouts.MARKET1501)
    assert len(records["train"]) == len(train)
    assert sum(r.name.endswith(".JPG") for r in records["train"]) == len(train[::3])


def test_an_image_listed_twice_in_a_split_is_named(market_dir, tmp_path):
    root = tmp_path / "mine"
    write_custom(market_dir, root)
    lines = (root / "train.txt").read_text().splitlines()  # a comment, then the images
    (root / "train.txt").write_text("\n".join([*lines, lines[2]]) + "\n")
    with pytest.raises(DatasetLayoutError, match=rf"1 image\(s\) of .* are listed more than "
                                                 rf"once in a split.*\n  train: "
                                                 rf"{lines[2].split()[0]} is listed 2 times"):
        prepare("custom", root, tmp_path / "data")


@pytest.mark.filterwarnings("ignore:Market-1501 counts")
@pytest.mark.parametrize("error", [OSError(27, "File too large"),
                                   RuntimeError("write() failed: No space left on device")])
def test_a_conversion_that_fails_to_write_is_removed_and_named(market_dir, tmp_path,
                                                               monkeypatch, error):
    real = Market1501.download_and_prepare

    def fails_half_way(self, *args, **kwargs):
        real(self, *args, **kwargs)  # TFDS's files are written...
        (tmp_path / "data" / "market1501" / "incomplete.XYZ_1.0.0").mkdir()
        raise error  # ... and then the disk is full

    monkeypatch.setattr(Market1501, "download_and_prepare", fails_half_way)
    with pytest.raises(DatasetLayoutError, match=r"preparing market1501 in .* failed \(.*(File "
                                                 r"too large|No space left).*\); what it had "
                                                 r"written is removed"):
        prepare("market1501", market_dir, tmp_path / "data", verbose=False)
    assert_nothing_prepared(tmp_path / "data")
    assert not (tmp_path / "data" / "market1501").exists()
