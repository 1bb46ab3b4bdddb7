"""A run's workdir: the one module that knows its file names, and the one way files are written.

Every stage meets here: the trainer writes the config, the log rows, the TensorBoard files,
the baselines and the checkpoints; ``evaluate``, ``embed``, ``export`` and ``convert`` read
them back given only ``--workdir``. ``atomic_output`` is how the project writes any file a
user keeps (also outside a workdir): to a uniquely named temporary file beside it, flushed
to disk, then renamed, so a crash or a full disk never leaves a half-written file under the
real name. It needs only the standard library, so ``data_pipeline`` uses it too.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from dualattn.errors import UserError

CHECKPOINT_KINDS = ("latest", "best")


class OutputPathError(UserError, OSError):
    """An output path that cannot be written: the message names the flag and the fix."""


def check_output_file(path: str | Path, flag: str) -> Path:
    """``path`` as a file the user asked for (``flag`` names where): its folder must exist and
    be writable, and the path must not be a folder. Checked before any work is spent."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise OutputPathError(f"{flag} {path} is a folder; name a file to write")
    folder = path.parent
    if not folder.is_dir():
        raise OutputPathError(f"{flag} {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputPathError(f"{flag} {path}: folder {folder} is not writable")
    return path


def check_output_folder(path: str | Path, flag: str) -> Path:
    """``path`` as a folder to write files into: created if missing (its parents too), and
    writable."""
    path = Path(path).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise OutputPathError(f"{flag} {path} is not a folder") from None
    except OSError as e:
        raise OutputPathError(f"{flag} {path} cannot be created ({e.strerror or e})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputPathError(f"{flag} {path} is not writable")
    return path


@contextlib.contextmanager
def atomic_output(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write; when the block ends without an error
    the file is flushed to disk and renamed to ``path``, else removed. ``suffix`` keeps an
    extension that a writer insists on (``np.savez`` adds ``.npz`` to names without it)."""
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{path} is a folder; name a file to write")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{suffix}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` (text is UTF-8) to ``path`` through ``atomic_output``."""
    with atomic_output(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    return Path(path)


class WorkdirError(UserError, OSError):
    """The workdir cannot be created or written."""


class WorkdirInUseError(UserError, OSError):
    """Another trainer holds the workdir's lock."""


class RunDir:
    """The files of one run's workdir, by name:

    - ``config.json``: the resolved config (``configs/saved.py`` reads it back);
    - ``metrics.jsonl``: one JSON row per logged training step and per evaluation;
    - ``tensorboard/``: the same scalars and figures as event files;
    - ``checkpoints/latest`` and ``checkpoints/best``: orbax step folders;
    - ``baselines.json``: the untrained network's and colour histograms' scores;
    - ``report.html`` (training) and ``report_<checkpoint>.html`` (``evaluate --report``);
    - ``lock``: the trainer writing the workdir (``exclusive``).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser().absolute()
        self.config = self.path / "config.json"
        self.metrics = self.path / "metrics.jsonl"
        self.tensorboard = self.path / "tensorboard"
        self.checkpoints = self.path / "checkpoints"
        self.baselines = self.path / "baselines.json"
        self.lock = self.path / "lock"

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def report(self, label: str | None = None) -> Path:
        """``report.html``, or ``report_<label>.html`` for ``evaluate --report``."""
        return self.path / (f"report_{label}.html" if label else "report.html")

    def prepare(self, process: int = 0) -> None:
        """Create the folder and prove it writable before any work is spent."""
        probe = self.path / f".write_test.{process}.{os.getpid()}"
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as e:
            raise WorkdirError(f"--workdir {self.path} is not writable ({e.strerror or e}); "
                               "choose another folder or fix its permissions") from e

    # -- metrics.jsonl ---------------------------------------------------------------------

    def rows(self) -> list[dict]:
        """The rows of ``metrics.jsonl`` (none if it is missing); a torn last line from a
        kill mid-write is skipped."""
        rows = []
        for line in self.metrics.read_text().splitlines() if self.metrics.exists() else []:
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
        return rows

    def append_row(self, row: dict) -> None:
        with self.metrics.open("a") as f:
            f.write(json.dumps(row) + "\n")

    def truncate_rows_after(self, step: int) -> None:
        """Drop the rows logged after ``step`` (a resumed run logs those steps again)."""
        if not self.metrics.exists():
            return
        lines = self.metrics.read_text().splitlines(keepends=True)
        keep = []
        for line in lines:
            try:
                if json.loads(line)["step"] <= step:
                    keep.append(line)
            except (ValueError, KeyError):
                continue
        if len(keep) != len(lines):
            atomic_write(self.metrics, "".join(keep))

    def logged_evaluations(self, upto: int | None = None) -> dict[int, float]:
        """step -> mAP of the evaluation rows, up to step ``upto``."""
        return {int(r["step"]): float(r["mAP"]) for r in self.rows()
                if "mAP" in r and (upto is None or r["step"] <= upto)}

    # -- checkpoints -----------------------------------------------------------------------

    def checkpoint_dir(self, which: str) -> Path:
        if which not in CHECKPOINT_KINDS:
            raise ValueError(f"which must be one of {CHECKPOINT_KINDS}, got {which!r}")
        return self.checkpoints / which

    def checkpoint_steps(self, which: str) -> list[int]:
        """The complete ``which`` checkpoints' steps, ascending, read from the folder names
        (orbax names a step's folder by its number once it is complete): no orbax manager,
        which in a multi-process run would wait for the other processes."""
        folder = self.checkpoint_dir(which)
        return sorted(int(p.name) for p in folder.glob("*") if p.name.isdigit()) \
            if folder.is_dir() else []

    # -- baselines.json --------------------------------------------------------------------

    def save_baselines(self, baselines: dict) -> None:
        atomic_write(self.baselines, json.dumps(baselines, indent=2) + "\n")

    def load_baselines(self) -> dict | None:
        return json.loads(self.baselines.read_text()) if self.baselines.exists() else None

    # -- lock ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the workdir's lock for the block: one trainer writes a workdir at a time.

        The lock is an ``flock`` on ``lock``, so the kernel releases it when its holder dies,
        ``kill -9`` included: a lock file left by a killed trainer is taken over. The file
        says who holds it (pid, host, start time) for the refusal's message."""
        while True:
            fd = os.open(self.lock, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 4096).decode(errors="replace")
                os.close(fd)
                raise WorkdirInUseError(self._in_use(holder)) from None
            try:  # the file we locked is still the one at the path (not unlinked meanwhile)
                if os.fstat(fd).st_ino == os.stat(self.lock).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                     "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
            yield
        finally:
            with contextlib.suppress(OSError):
                self.lock.unlink()
            os.close(fd)

    def _in_use(self, holder: str) -> str:
        try:
            who = json.loads(holder)
            by = f"pid {who['pid']} on {who['host']}, started {who['started']}"
        except (ValueError, KeyError, TypeError):
            by = "another process"
        return (f"--workdir {self.path} is in use by another trainer ({by}); wait for it to "
                "finish or stop it, or choose another --workdir")
