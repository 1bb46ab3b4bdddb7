"""TFDS builders for ReID datasets in their original layouts, usable without TensorFlow.

Each builder reads the user's unpacked folder (TFDS's ``manual_dir``) and writes array_record
files that ``as_data_source`` serves by random access, which grain needs. Images are stored as
their original JPEG bytes, unchanged. Features of every split: ``image``, ``pid`` (the
dataset's own id; 0 is a distractor), ``camid`` (0-based), ``label`` (the contiguous class for
``train``, -1 elsewhere) and ``path`` (the file name).

``prepare`` is the entry point: it validates the folder completely before TFDS writes anything
(TFDS then writes into an ``incomplete.*`` folder and renames it only when done, so an
interrupted prepare is never taken as complete), prints ids and images per split, and reuses
the prepared files on later runs.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import time
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from absl import logging as absl_logging

from data_pipeline.datasets import fingerprint, layouts
from data_pipeline.datasets.layouts import (
    CUSTOM,
    DUKEMTMC_REID,
    MARKET1501,
    MSMT17,
    Layout,
    cuhk03_np,
)


class ReIDBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared builder; subclasses set ``LAYOUT`` and a ``name``."""

    LAYOUT: Layout
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Original JPEG bytes, pid, 0-based camid, train labels."}

    def __init__(self, *args, records: dict[str, list[layouts.Record]] | None = None, **kwargs):
        self._records = records  # already scanned by prepare(); else scanned when generating
        super().__init__(*args, **kwargs)

    @property
    def MANUAL_DOWNLOAD_INSTRUCTIONS(self) -> str:  # noqa: N802 - TFDS's name
        return f"Unpack the dataset and pass its folder as manual_dir: {self.LAYOUT.describe()}."

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"{self.LAYOUT.name} person re-identification crops.",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3),
                                              encoding_format=self.LAYOUT.image_format),
                "pid": tfds.features.Scalar(np.int32),
                "camid": tfds.features.Scalar(np.int32),
                "label": tfds.features.Scalar(np.int32),
                "path": tfds.features.Text(),
            }),
        )

    def _split_generators(self, dl_manager):
        records = self._records or layouts.scan(dl_manager.manual_dir, self.LAYOUT)
        labels = layouts.train_labels(records["train"])
        return {split: self._generate_examples(records[split], labels if split == "train" else None)
                for split in layouts.SPLITS}

    def _generate_examples(self, records, labels):
        for r in records:
            yield r.name, {
                "image": r.path.read_bytes(),
                "pid": r.pid,
                "camid": r.camid,
                "label": -1 if labels is None else labels[r.pid],
                "path": r.name,
            }


class Market1501(ReIDBuilder):
    name = "market1501"
    LAYOUT = MARKET1501


class DukeMTMCReID(ReIDBuilder):
    name = "dukemtmc_reid"
    LAYOUT = DUKEMTMC_REID


class MSMT17Builder(ReIDBuilder):
    name = "msmt17"
    LAYOUT = MSMT17


class CUHK03NPDetected(ReIDBuilder):
    name = "cuhk03_np_detected"
    LAYOUT = cuhk03_np("detected")


class CUHK03NPLabeled(ReIDBuilder):
    name = "cuhk03_np_labeled"
    LAYOUT = cuhk03_np("labeled")


class CustomReID(ReIDBuilder):
    """A user's own dataset in the list-file layout (``layouts.CUSTOM``). Give each custom
    dataset its own ``dataset.data_dir``: the prepared files are named after the builder."""
    name = "custom"
    LAYOUT = CUSTOM


BUILDERS: dict[str, type[ReIDBuilder]] = {
    b.name: b for b in (Market1501, DukeMTMCReID, MSMT17Builder, CUHK03NPDetected, CUHK03NPLabeled,
                        CustomReID)}


def prepare(name: str, manual_dir: str | Path, data_dir: str | Path, *,
            verbose: bool = True, warn_counts: bool = True) -> ReIDBuilder:
    """Build dataset ``name`` from ``manual_dir`` into ``data_dir`` once; return its builder.

    Raises ``DatasetLayoutError`` with the fix when the folder is wrong (nothing is written
    then) or when writing fails (a full disk; what was written is removed). ``warn_counts``:
    warn when the split sizes differ from the published dataset's (not for a generated one).
    """
    if name not in BUILDERS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(BUILDERS)}")
    cls = BUILDERS[name]
    data_dir = Path(data_dir).expanduser()
    builder, prepared = _existing(name, data_dir)
    if prepared:
        check_source(builder, manual_dir)
        return builder
    records = layouts.scan(manual_dir, cls.LAYOUT)
    source = fingerprint.fingerprint(manual_dir)
    summary = layouts.summarize(records, cls.LAYOUT, warn=warn_counts)
    if verbose:
        print(summary)
        print(f"preparing {name} in {data_dir} (once) ...", flush=True)
    start = time.perf_counter()
    try:
        with quiet_tfds():
            builder = cls(data_dir=str(data_dir), file_format="array_record", records=records)
            builder.download_and_prepare(
                download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
        fingerprint.record(builder.data_dir, source)
    except BaseException as e:
        _remove_partial(data_dir, name)
        if isinstance(e, (OSError, RuntimeError)):  # a full disk, a file-size limit
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise layouts.DatasetLayoutError(
                f"preparing {name} in {data_dir} failed ({' '.join(reason.split())[:200]}); "
                "what it had written is removed. Fix the cause (a full disk: free space), then "
                "run the same command again") from e
        raise
    if verbose:
        print(f"prepared {name} in {time.perf_counter() - start:.0f} s")
    return builder


def _remove_partial(data_dir: Path, name: str) -> None:
    """A failed preparation's files: TFDS's ``incomplete.*`` folders under
    ``data_dir/<name>``, a version folder that was finished but never got its source record
    (so it could not be checked on reuse), and the empty folders TFDS made."""
    for path in (data_dir / name).glob("*"):
        if path.is_dir() and ("incomplete" in path.name
                              or not (path / fingerprint.SOURCE_FILE).exists()):
            shutil.rmtree(path, ignore_errors=True)
    for empty in (data_dir / name, data_dir / "downloads" / "extracted", data_dir / "downloads"):
        with contextlib.suppress(OSError):
            empty.rmdir()  # only when empty


@contextlib.contextmanager
def quiet_tfds():
    """TFDS logs that the folder it is about to fill has no dataset_info.json, prints a
    "Downloading and preparing dataset Unknown size" banner and draws progress bars (escape
    codes in a log file); none of it tells our users anything, so it is silenced at the
    source and ``prepare`` says what happens in its own lines."""
    level = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)
    tfds.disable_progress_bar()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        absl_logging.set_verbosity(level)


def prepared_source(name: str, data_dir: str | Path) -> dict | None:
    """The fingerprint of the folder dataset ``name`` in ``data_dir`` was prepared from, or
    None when it is not prepared there."""
    builder, prepared = _existing(name, Path(data_dir).expanduser())
    return fingerprint.recorded(builder.data_dir) if prepared else None


def _existing(name: str, data_dir: Path) -> tuple[ReIDBuilder, bool]:
    """The builder of ``name`` in ``data_dir``, and whether it is prepared there."""
    with quiet_tfds():
        builder = BUILDERS[name](data_dir=str(data_dir), file_format="array_record")
        return builder, builder.is_prepared()


def check_source(builder: ReIDBuilder, manual_dir: str | Path) -> None:
    """Refuse prepared files that came from another folder, or from this one before its files
    changed (``data_pipeline.datasets.fingerprint``). A source folder removed after
    preparing is fine when the config still names it."""
    current = fingerprint.fingerprint(manual_dir)
    stored = fingerprint.recorded(builder.data_dir)
    if stored is None:
        raise layouts.DatasetLayoutError(
            f"{builder.data_dir} holds a prepared {builder.name} without the record of the "
            f"folder it came from ({fingerprint.SOURCE_FILE}); delete {builder.data_dir} to "
            "prepare it again")
    if not Path(current["root"]).exists() and stored["root"] == current["root"]:
        return
    why = fingerprint.mismatch(stored, current)
    if why:
        raise layouts.DatasetLayoutError(
            f"dataset.root {current['root']}: the prepared {builder.name} in "
            f"{builder.data_dir} {why}; set dataset.data_dir to another folder to prepare "
            f"this one there, or delete {builder.data_dir} to prepare it again")


def read_columns(source, *keys: str) -> tuple[np.ndarray, ...]:
    """Whole columns of a split (e.g. ``"pid", "camid"``), reading each record once."""
    records = [source[i] for i in range(len(source))]

    def column(values):
        # bytes/str stay objects: NumPy's fixed-width "S" arrays drop trailing NUL bytes.
        textual = bool(values) and isinstance(values[0], (bytes, str))
        return np.array(values, dtype=object if textual else None)

    return tuple(column([r[k] for r in records]) for k in keys)


def data_sources(builder: ReIDBuilder) -> dict[str, tfds.data_sources.ArrayRecordDataSource]:
    """Random-access sources per split; images stay JPEG bytes for the pipeline to decode."""
    return builder.as_data_source(decoders={"image": tfds.decode.SkipDecoding()})
