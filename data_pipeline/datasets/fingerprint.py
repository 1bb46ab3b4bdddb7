"""Which folder a prepared dataset was built from, so a prepared copy is never reused for
another or a changed one.

TFDS finds a prepared dataset by its name and version under ``data_dir`` alone: pointed at
another ``dataset.root`` with the same ``data_dir``, it would serve the old images, and a run
would report the old dataset's metrics. So the builder stores the source folder's fingerprint
(``SOURCE_FILE``: its absolute path, file count, total size and a digest of every file's
relative path, size and modification time) beside the prepared files, and checks it whenever
it reuses them.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from dualattn.run.workdir import atomic_write

SOURCE_FILE = "source.json"


def fingerprint(root: str | Path) -> dict:
    """The folder's identity: where it is and what files it holds (path, size, mtime)."""
    root = Path(root).expanduser().absolute()
    digest, count, total = hashlib.sha256(), 0, 0
    for folder, dirs, files in os.walk(root, followlinks=True):  # datasets are often links
        dirs.sort()
        for name in sorted(files):
            path = Path(folder) / name
            stat = path.stat()
            digest.update(f"{path.relative_to(root)}\t{stat.st_size}\t{stat.st_mtime_ns}\n"
                          .encode())
            count, total = count + 1, total + stat.st_size
    return {"root": str(root), "files": count, "bytes": total, "digest": digest.hexdigest()}


def record(prepared: str | Path, source: dict) -> None:
    """Store ``source`` (a ``fingerprint``) beside the prepared files in ``prepared``."""
    atomic_write(Path(prepared) / SOURCE_FILE, json.dumps(source, indent=2) + "\n")


def recorded(prepared: str | Path) -> dict | None:
    """The stored fingerprint, or None when there is none."""
    path = Path(prepared) / SOURCE_FILE
    return json.loads(path.read_text()) if path.exists() else None


def mismatch(stored: dict, current: dict) -> str | None:
    """How ``current`` differs from ``stored``, in words; None when it is the same folder
    with the same files."""
    if stored["root"] != current["root"]:
        return f"holds the images of {stored['root']} ({stored['files']} files)"
    if stored["digest"] != current["digest"]:
        return (f"was prepared before the folder's files changed ({stored['files']} files, "
                f"{stored['bytes']} bytes then; {current['files']} files, "
                f"{current['bytes']} bytes now)")
    return None
