"""Reading ReID datasets in their original folder layouts: parse names, validate, split.

This is the part of loading that can go wrong on a user's disk, so it is kept free of TFDS and
checks everything before anything is written: a missing folder, a wrong layout, names that do
not parse and unreadable images each end in one ``DatasetLayoutError`` that names the path,
the expected layout, and every offending file (the first few of them, with a count).
"""

from __future__ import annotations

import dataclasses
import io
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

SPLITS = ("train", "query", "gallery")
MAX_LISTED = 20


class DatasetLayoutError(ValueError):
    """The dataset folder is not what its layout requires; the message says how to fix it."""


@dataclasses.dataclass(frozen=True)
class Record:
    path: Path
    pid: int  # the dataset's own person id; 0 marks a distractor
    camid: int  # 0-based camera index


@dataclasses.dataclass(frozen=True)
class Layout:
    """One dataset's on-disk convention."""

    name: str
    folders: dict[str, str]  # split -> folder
    pattern: re.Pattern  # groups: pid, camera (1-based)
    example: str
    junk_pid: int | None  # images with this pid are dropped at load (Market's -1)
    # Published (train ids, train images, query images, gallery images) for a sanity warning.
    published: tuple[int, int, int, int] | None

    def describe(self) -> str:
        folders = ", ".join(f"{f}/" for f in self.folders.values())
        return f"{self.name}: a folder holding {folders} with images named like {self.example}"


MARKET1501 = Layout(
    name="Market-1501",
    folders={"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"},
    pattern=re.compile(r"^(-?\d+)_c(\d+)s\d+_\d+_\d+\.jpg$"),
    example="0002_c1s1_000451_03.jpg",
    junk_pid=-1,
    published=(751, 12936, 3368, 15913),
)

DUKEMTMC_REID = Layout(
    name="DukeMTMC-reID",
    folders={"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"},
    pattern=re.compile(r"^(\d+)_c(\d+)_f\d+\.jpg$"),
    example="0001_c2_f0046182.jpg",
    junk_pid=None,
    published=(702, 16522, 2228, 17661),
)


def _listing(problems: list[str]) -> str:
    shown = "\n  ".join(problems[:MAX_LISTED])
    more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    return f"\n  {shown}{more}"


def find_root(manual_dir: str | Path, layout: Layout) -> Path:
    """The folder holding the split folders: ``manual_dir`` itself or its only subfolder.

    Archives unpack into one top folder (``Market-1501-v15.09.15/``), so pointing at its parent
    works too.
    """
    manual_dir = Path(manual_dir).expanduser()
    if not manual_dir.is_dir():
        raise DatasetLayoutError(f"dataset folder {manual_dir} does not exist; expected "
                                 f"{layout.describe()}")
    needed = set(layout.folders.values())

    def has_splits(d: Path) -> bool:
        return all((d / f).is_dir() for f in needed)

    if has_splits(manual_dir):
        return manual_dir
    subdirs = [d for d in manual_dir.iterdir() if d.is_dir()]
    if len(subdirs) == 1 and has_splits(subdirs[0]):
        return subdirs[0]
    missing = sorted(f for f in needed if not (manual_dir / f).is_dir())
    raise DatasetLayoutError(f"{manual_dir} is missing {', '.join(missing)}; expected "
                             f"{layout.describe()}")


def _unreadable(path: Path) -> str | None:
    """None if the image decodes completely, else the reason."""
    try:
        with Image.open(io.BytesIO(path.read_bytes())) as img:
            img.load()  # full decode: catches truncated files that verify() lets through
            if img.mode not in ("RGB", "L"):
                return f"{path}: unsupported colour mode {img.mode}"
    except Exception as e:  # noqa: BLE001 - any decoder failure means the file is unusable
        return f"{path}: {type(e).__name__}: {e}"
    return None


def scan(manual_dir: str | Path, layout: Layout, *, check_images: bool = True,
         num_threads: int = 8) -> dict[str, list[Record]]:
    """Records per split, junk dropped, in sorted file order; raises on any problem.

    Only ``.jpg`` files are considered (the archives carry stray ``Thumbs.db`` files).
    """
    root = find_root(manual_dir, layout)
    records, bad_names, files = {}, [], []
    for split, folder in layout.folders.items():
        split_records = []
        for path in sorted((root / folder).glob("*.jpg")):
            m = layout.pattern.match(path.name)
            if m is None:
                bad_names.append(str(path))
                continue
            pid, cam = int(m.group(1)), int(m.group(2))
            files.append(path)
            if pid == layout.junk_pid:
                continue
            split_records.append(Record(path=path, pid=pid, camid=cam - 1))
        records[split] = split_records
    if bad_names:
        raise DatasetLayoutError(f"{len(bad_names)} file name(s) in {root} do not follow the "
                                 f"{layout.name} convention (like {layout.example}):"
                                 + _listing(bad_names))
    empty = [layout.folders[s] for s in SPLITS if not records[s]]
    if empty:
        raise DatasetLayoutError(f"no usable images in {', '.join(empty)} under {root}; "
                                 f"expected {layout.describe()}")
    if check_images:
        with ThreadPoolExecutor(num_threads) as pool:  # PIL decodes without the GIL
            corrupt = [r for r in pool.map(_unreadable, files) if r]
        if corrupt:
            raise DatasetLayoutError(f"{len(corrupt)} image(s) under {root} cannot be decoded; "
                                     "re-extract them from the original archive or delete them:"
                                     + _listing(corrupt))
    return records


def train_labels(records: list[Record]) -> dict[int, int]:
    """Contiguous 0-based class labels for the training pids, in pid order."""
    return {pid: i for i, pid in enumerate(sorted({r.pid for r in records}))}


def summarize(records: dict[str, list[Record]], layout: Layout, *, warn: bool = True) -> str:
    """A per-split ids/images table; warns when counts differ from the published ones."""
    lines = [f"{layout.name}: {'split':<8}{'ids':>7}{'images':>9}{'cameras':>9}"]
    for split in SPLITS:
        recs = records[split]
        lines.append(f"{'':<{len(layout.name) + 2}}{split:<8}{len({r.pid for r in recs}):>7}"
                     f"{len(recs):>9}{len({r.camid for r in recs}):>9}")
    if warn and layout.published is not None:
        found = (len({r.pid for r in records["train"]}), len(records["train"]),
                 len(records["query"]), len(records["gallery"]))
        if found != layout.published:
            warnings.warn(f"{layout.name} counts (train ids, train, query, gallery images) are "
                          f"{found}, the published ones are {layout.published}; fine for a "
                          "subset or a generated copy, otherwise check the extraction",
                          stacklevel=2)
    return "\n".join(lines)
