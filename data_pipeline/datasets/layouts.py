"""Reading ReID datasets in their original folder layouts: parse names, validate, split.

This is the part of loading that can go wrong on a user's disk, so it is kept free of TFDS and
checks everything before anything is written: a missing folder, a wrong layout, names that do
not parse and unreadable images each end in one ``DatasetLayoutError`` that names the path,
the expected layout, and every offending file (the first few of them, with a count).
"""

from __future__ import annotations

import collections
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
    name: str  # path relative to the dataset folder: a stable key wherever the data lives


Entry = tuple[Path, int, int]  # path, pid, 1-based camera


@dataclasses.dataclass(frozen=True)
class Layout:
    """One dataset's on-disk convention; subclasses say how to list its images."""

    name: str
    example: str  # a valid image name, shown in error messages
    junk_pid: int | None  # images with this pid are dropped at load (Market's -1)
    # Published (train ids, train images, query images, gallery images) for a sanity warning.
    published: tuple[int, int, int, int] | None
    image_format: str = "jpeg"

    def describe(self) -> str:
        raise NotImplementedError

    def missing(self, root: Path) -> list[str]:
        """Entries of the layout absent under ``root``; empty when ``root`` is the dataset."""
        raise NotImplementedError

    def entries(self, root: Path) -> tuple[dict[str, list[Entry]], list[str]]:
        """Every image per split, and the problems found (unparseable names, missing files)."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class FolderLayout(Layout):
    """Market-style: one folder per split, pid and camera in each file name."""

    folders: dict[str, str] = dataclasses.field(default_factory=dict)  # split -> folder
    pattern: re.Pattern = re.compile("")  # groups: pid, camera (1-based)
    subdir: str = ""  # e.g. CUHK03-NP's "detected"

    @property
    def suffix(self) -> str:
        return Path(self.example).suffix

    def describe(self) -> str:
        prefix = f"{self.subdir}/" if self.subdir else ""
        folders = ", ".join(f"{prefix}{f}/" for f in self.folders.values())
        return f"{self.name}: a folder holding {folders} with images named like {self.example}"

    def missing(self, root: Path) -> list[str]:
        return sorted(f"{self.subdir}/{f}".lstrip("/") for f in self.folders.values()
                      if not (root / self.subdir / f).is_dir())

    def entries(self, root):
        found, bad = {}, []
        for split, folder in self.folders.items():
            found[split] = []
            # Only images of the dataset's type, in any case (.jpg, .JPG): the archives carry
            # stray Thumbs.db files.
            for path in sorted((root / self.subdir / folder).iterdir()):
                if path.suffix.lower() != self.suffix or not path.is_file():
                    continue
                m = self.pattern.match(path.name)
                if m is None:
                    bad.append(f"{path}: name does not follow {self.example}")
                    continue
                found[split].append((path, int(m.group(1)), int(m.group(2))))
        return found, bad


@dataclasses.dataclass(frozen=True)
class ListLayout(Layout):
    """MSMT17-style: list files of "relative/path pid" lines; camera from the name.

    V1 keeps images in ``train/`` and ``test/``, V2 in ``mask_train_v2/`` and ``mask_test_v2/``;
    both are recognised. Training uses list_train and list_val together, as the usual
    protocol does (32,621 images).
    """

    lists: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    image_dirs: tuple[tuple[str, str], ...] = ()  # (train dir, test dir) per version
    camera_field: int = 2  # "_"-separated field of the file name holding the camera

    def describe(self) -> str:
        lists = ", ".join(sorted({f for fs in self.lists.values() for f in fs}))
        dirs = " or ".join(f"{a}/ + {b}/" for a, b in self.image_dirs)
        return f"{self.name}: a folder holding {lists} and the images in {dirs}"

    def _dirs(self, root: Path) -> tuple[str, str] | None:
        return next((d for d in self.image_dirs if all((root / x).is_dir() for x in d)), None)

    def missing(self, root: Path) -> list[str]:
        needed = sorted({f for fs in self.lists.values() for f in fs if not (root / f).is_file()})
        if self._dirs(root) is None:
            needed.append(" or ".join("/ + ".join(d) + "/" for d in self.image_dirs))
        return needed

    def entries(self, root):
        train_dir, test_dir = self._dirs(root)
        found, bad = {}, []
        for split, list_files in self.lists.items():
            found[split] = []
            folder = root / (train_dir if split == "train" else test_dir)
            for list_file in list_files:
                for n, line in enumerate((root / list_file).read_text().splitlines(), 1):
                    if not line.strip():
                        continue
                    fields = line.split()
                    path = folder / fields[0]
                    try:
                        pid = int(fields[1])
                        cam = int(path.name.split("_")[self.camera_field])
                    except (IndexError, ValueError):
                        bad.append(f"{root / list_file}:{n}: expected 'path pid' with a name "
                                   f"like {self.example}, got {line.strip()!r}")
                        continue
                    if not path.is_file():
                        bad.append(f"{root / list_file}:{n}: {path} does not exist")
                        continue
                    found[split].append((path, pid, cam))
        return found, bad


@dataclasses.dataclass(frozen=True)
class SplitListLayout(Layout):
    """A user's own dataset: ``train.txt``, ``query.txt`` and ``gallery.txt`` in the folder,
    one image a line as ``relative/path.jpg PID CAMID`` (whitespace-separated integers; any
    numbering: only equality matters, and query and gallery share camera ids). Query and
    gallery identities must share ids; training ids are relabelled 0..N-1."""

    files: dict[str, str] = dataclasses.field(default_factory=dict)  # split -> list file

    def describe(self) -> str:
        return (f"{self.name}: a folder holding {', '.join(self.files.values())}, each line "
                f"'relative/path.jpg PID CAMID' (e.g. {self.example})")

    def missing(self, root: Path) -> list[str]:
        return sorted(f for f in self.files.values() if not (root / f).is_file())

    def entries(self, root):
        found, bad = {}, []
        for split, list_file in self.files.items():
            found[split] = []
            for n, line in enumerate((root / list_file).read_text().splitlines(), 1):
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                fields = line.split()
                try:
                    if len(fields) != 3:
                        raise ValueError
                    pid, cam = int(fields[1]), int(fields[2])
                except ValueError:
                    bad.append(f"{root / list_file}:{n}: expected 'relative/path PID CAMID', "
                               f"got {line.strip()!r}")
                    continue
                path = root / fields[0]
                if not path.is_file():
                    bad.append(f"{root / list_file}:{n}: {path} does not exist")
                    continue
                found[split].append((path, pid, cam + 1))  # scan() makes cameras 0-based
        return found, bad


CUSTOM = SplitListLayout(
    name="custom", example="cam1/person0007_0003.jpg 7 1", junk_pid=None, published=None,
    files={"train": "train.txt", "query": "query.txt", "gallery": "gallery.txt"})


_MARKET_FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}

MARKET1501 = FolderLayout(
    name="Market-1501", example="0002_c1s1_000451_03.jpg", junk_pid=-1,
    published=(751, 12936, 3368, 15913), folders=_MARKET_FOLDERS,
    pattern=re.compile(r"^(-?\d+)_c(\d+)s\d+_\d+_\d+\.jpg$", re.IGNORECASE))

DUKEMTMC_REID = FolderLayout(
    name="DukeMTMC-reID", example="0001_c2_f0046182.jpg", junk_pid=None,
    published=(702, 16522, 2228, 17661), folders=_MARKET_FOLDERS,
    pattern=re.compile(r"^(\d+)_c(\d+)_f\d+\.jpg$", re.IGNORECASE))

MSMT17 = ListLayout(
    name="MSMT17", example="0000_000_01_0303morning_0015_0.jpg", junk_pid=None,
    published=(1041, 32621, 11659, 82161),
    lists={"train": ("list_train.txt", "list_val.txt"), "query": ("list_query.txt",),
           "gallery": ("list_gallery.txt",)},
    image_dirs=(("train", "test"), ("mask_train_v2", "mask_test_v2")))


def cuhk03_np(variant: str) -> FolderLayout:
    """CUHK03 in Zhong et al.'s new protocol (767 train / 700 test ids), detected or labeled."""
    published = {"detected": (767, 7365, 1400, 5332), "labeled": (767, 7368, 1400, 5328)}
    return FolderLayout(
        name=f"CUHK03-NP ({variant})", example="0001_c1_1.png", junk_pid=None,
        published=published[variant], image_format="png", folders=_MARKET_FOLDERS,
        subdir=variant, pattern=re.compile(r"^(\d+)_c(\d+)_\d+\.png$", re.IGNORECASE))


def listing(problems: list[str]) -> str:
    """The first ``MAX_LISTED`` problems, one per indented line, and how many more."""
    shown = "\n  ".join(problems[:MAX_LISTED])
    more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    return f"\n  {shown}{more}"


def find_root(manual_dir: str | Path, layout: Layout) -> Path:
    """The dataset folder: ``manual_dir`` itself or its only subfolder.

    Archives unpack into one top folder (``Market-1501-v15.09.15/``), so pointing at its parent
    works too.
    """
    manual_dir = Path(manual_dir).expanduser()
    if not manual_dir.is_dir():
        raise DatasetLayoutError(f"dataset folder {manual_dir} does not exist; expected "
                                 f"{layout.describe()}")
    missing = layout.missing(manual_dir)
    if not missing:
        return manual_dir
    subdirs = [d for d in manual_dir.iterdir() if d.is_dir()]
    if len(subdirs) == 1 and not layout.missing(subdirs[0]):
        return subdirs[0]
    raise DatasetLayoutError(f"{manual_dir} is missing {', '.join(missing)}; expected "
                             f"{layout.describe()}")


def _unreadable(path: Path, modes: tuple[str, ...] | None = ("RGB", "L")) -> str | None:
    """None if the image decodes completely (in one of ``modes``, if given), else the reason."""
    try:
        with Image.open(io.BytesIO(path.read_bytes())) as img:
            img.load()  # full decode: catches truncated files that verify() lets through
            if modes is not None and img.mode not in modes:
                return f"{path}: unsupported colour mode {img.mode}"
    except Exception as e:  # noqa: BLE001 - any decoder failure means the file is unusable
        return f"{path}: {type(e).__name__}: {e}"
    return None


def unreadable_images(paths: list[Path], modes: tuple[str, ...] | None = ("RGB", "L"),
                      num_threads: int = 8) -> list[str]:
    """``"path: reason"`` for every image of ``paths`` that does not decode completely (or is
    not in one of ``modes``), decoded on ``num_threads`` threads (PIL releases the GIL)."""
    with ThreadPoolExecutor(num_threads) as pool:
        return [r for r in pool.map(lambda p: _unreadable(p, modes), paths) if r]


def scan(manual_dir: str | Path, layout: Layout, *, check_images: bool = True,
         num_threads: int = 8) -> dict[str, list[Record]]:
    """Records per split, junk dropped, in listing order; raises on any problem."""
    root = find_root(manual_dir, layout)
    found, problems = layout.entries(root)
    if problems:
        raise DatasetLayoutError(f"{len(problems)} problem(s) with the {layout.name} files in "
                                 f"{root}; expected {layout.describe()}:" + listing(problems))
    records = {split: [Record(path, pid, cam - 1, path.relative_to(root).as_posix())
                       for path, pid, cam in found[split]
                       if pid != layout.junk_pid] for split in SPLITS}
    twice = [f"{split}: {name} is listed {n} times" for split in SPLITS
             for name, n in collections.Counter(r.name for r in records[split]).items() if n > 1]
    if twice:
        raise DatasetLayoutError(f"{len(twice)} image(s) of {root} are listed more than once in "
                                 "a split; list each image once:" + listing(twice))
    files = [path for split in SPLITS for path, _, _ in found[split]]
    empty = [s for s in SPLITS if not records[s]]
    if empty:
        raise DatasetLayoutError(f"no usable images for split(s) {', '.join(empty)} in {root}; "
                                 f"expected {layout.describe()}")
    if check_images:
        corrupt = unreadable_images(files, num_threads=num_threads)
        if corrupt:
            raise DatasetLayoutError(f"{len(corrupt)} image(s) under {root} cannot be decoded; "
                                     "re-extract them from the original archive or delete them:"
                                     + listing(corrupt))
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
