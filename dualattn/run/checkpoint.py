"""Checkpoints of the training state: the latest (for resuming) and the best by mAP.

A checkpoint holds named parts, ``{"model": ..., "optimizer": ...}`` (the model's variables
and the optimizer's state), and JSON metadata (step, class count, the best mAP so far, or
the scores of a best checkpoint). Inference restores the ``model`` part alone.

Two orbax managers in ``checkpoints/latest`` and ``checkpoints/best`` rather than one with a
``best_fn``: combined with ``max_to_keep``, a single manager can delete the newest step when
it is not among the best, and a resumed run would then go back in time. Orbax writes each
step into a temporary folder and renames it when complete, so a crash mid-save leaves the
previous checkpoint intact.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from dualattn.errors import UserError
from dualattn.run.workdir import CHECKPOINT_KINDS, RunDir

# Why a run has no checkpoint of each kind yet.
_NOT_YET = {"latest": "the run has not saved yet", "best": "the run has not evaluated yet"}


class CheckpointMismatchError(UserError, ValueError):
    """The checkpoint does not fit the model being built (another config wrote it)."""


class CheckpointWriteError(UserError, OSError):
    """A checkpoint could not be written (disk full, folder gone...); older ones are intact."""


class CheckpointNotFoundError(UserError, FileNotFoundError):
    """The workdir holds no checkpoint of the kind asked for."""


class CheckpointDamagedError(UserError, OSError):
    """A checkpoint's files are missing or cut; the message names an intact alternative."""


def _os_reason(error: BaseException) -> str:
    """The operating-system reason inside an orbax/tensorstore error, else its first line."""
    match = re.search(r"os_error_code='(\d+)'", str(error))
    if match:
        return os.strerror(int(match.group(1)))
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error).splitlines()[0][:200] if str(error) else type(error).__name__


def _key_name(key) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _reason(error: BaseException) -> str:
    """One line on why a checkpoint could not be read."""
    text = " ".join(str(error).split()).split(" See full TensorStore details")[0]
    return text[:160] or type(error).__name__


def _leaves(tree, prefix: str = ""):
    """``('a/b/value', shape)`` of the leaves of orbax's nested-dict metadata tree."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _leaves(v, f"{prefix}/{k}" if prefix else str(k))
    else:
        yield prefix, tuple(getattr(tree, "shape", ()) or ())


def _manager(directory: Path, keep: int) -> ocp.CheckpointManager:
    # Several processes save synchronously: orbax's background saves meet at barriers whose
    # order then depends on thread timing, and two managers' saves in flight at once
    # deadlocked or failed ("Barrier ... is already ongoing") in our 2-process test.
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=jax.process_count() == 1)
    # Handlers named up front so that a fresh process can read metadata before any save or
    # restore has told orbax what each item is.
    handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


class _DamagedError(Exception):
    """A checkpoint at ``step`` that cannot be read, and why (internal: callers turn it into
    a skip or a CheckpointDamagedError)."""

    def __init__(self, step: int, reason: str):
        super().__init__(step, reason)
        self.step, self.reason = step, reason


class Checkpointer:
    """The latest and best checkpoints of a run (``RunDir.checkpoints``)."""

    def __init__(self, run: RunDir, keep_latest: int = 2):
        self.directory = run.checkpoints
        self.latest = _manager(run.checkpoint_dir("latest"), keep_latest)
        self.best = _manager(run.checkpoint_dir("best"), 1)

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def _manager(self, which: str) -> ocp.CheckpointManager:
        if which not in CHECKPOINT_KINDS:
            raise ValueError(f"which must be one of {CHECKPOINT_KINDS}, got {which!r}")
        return self.best if which == "best" else self.latest

    @staticmethod
    def _meta(manager: ocp.CheckpointManager, step: int) -> dict:
        try:
            return dict(manager.restore(step, args=ocp.args.Composite(
                meta=ocp.args.JsonRestore())).meta)
        except Exception as e:  # noqa: BLE001 - a cut or missing file fails in many ways
            raise _DamagedError(step, _reason(e)) from e

    def metadata(self, which: str) -> dict | None:
        """The newest ``which`` checkpoint's metadata, or None when there is none; refused in
        one line, naming an intact alternative, when it cannot be read."""
        manager = self._manager(which)
        step = manager.latest_step()
        if step is None:
            return None
        try:
            return self._meta(manager, step)
        except _DamagedError as e:
            raise CheckpointDamagedError(
                f"the {which} checkpoint (step {step}) under {self.directory} cannot be read "
                f"({e.reason}); {self._alternative(which, step, self._meta)}") from e

    @staticmethod
    def _args(state, meta: dict[str, Any]) -> ocp.args.Composite:
        return ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  meta=ocp.args.JsonSave(meta))

    @contextlib.contextmanager
    def _writing(self):
        """Saves run in the background and report failures at the next save or ``wait``; turn
        any of them into one CheckpointWriteError naming the step that is still intact."""
        try:
            yield
        except Exception as e:  # noqa: BLE001 - tensorstore reports I/O errors as ValueError
            kept = self.latest.latest_step()
            raise CheckpointWriteError(
                f"writing a checkpoint under {self.directory} failed ({_os_reason(e)}); "
                + (f"the last complete one (step {kept}) is intact. " if kept is not None
                   else "no earlier checkpoint exists. ")
                + "Fix the cause (a full disk: free space), then run the same command to resume"
            ) from e

    # One save in flight at a time (a save first waits for the other manager's).
    def save_latest(self, step: int, state, meta: dict[str, Any]) -> None:
        """``state``: the named parts, ``{"model": ..., "optimizer": ...}``."""
        with self._writing():
            self.best.wait_until_finished()
            self.latest.save(step, args=self._args(state, meta))

    def save_best(self, step: int, state, meta: dict[str, Any]) -> None:
        with self._writing():
            self.latest.wait_until_finished()
            self.best.save(step, args=self._args(state, {"step": step, **meta}))

    @staticmethod
    def _step(manager: ocp.CheckpointManager, missing: str) -> int:
        step = manager.latest_step()
        if step is None:
            raise CheckpointNotFoundError(f"no checkpoint under {manager.directory}: {missing}")
        return step

    @staticmethod
    def _check_matches(manager: ocp.CheckpointManager, step: int, abstract, part=None) -> None:
        """Raise CheckpointMismatchError unless the checkpoint at ``step`` holds exactly the
        variables of ``abstract`` (under ``part`` of the saved state, if given): another
        config wrote it. Reading the metadata of a damaged checkpoint raises as it is."""
        meta = manager.item_metadata(step)["state"]
        tree = getattr(meta, "tree", meta)
        stored = dict(_leaves(tree[part] if part else tree))
        wanted = {"/".join(_key_name(k) for k in path): tuple(leaf.shape)
                  for path, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]}
        extra, missing = sorted(stored.keys() - wanted), sorted(wanted.keys() - stored)
        shapes = sorted(f"{k} {stored[k]} vs {wanted[k]}" for k in stored.keys() & wanted
                        if stored[k] != wanted[k])
        if extra or missing or shapes:
            raise CheckpointMismatchError(
                f"the checkpoint at {manager.directory}/{step} does not match this model "
                f"configuration ({len(extra)} variable(s) only in the checkpoint, e.g. "
                f"{extra[:3]}; {len(missing)} only in the model, e.g. {missing[:3]}; "
                f"{len(shapes)} of another shape, e.g. {shapes[:2]}); use the config that "
                "wrote it, or a new --workdir to start afresh")

    def _read(self, manager: ocp.CheckpointManager, step: int, abstract, args, part=None):
        """``manager.restore(step, args)`` after checking the variables match; a checkpoint
        that cannot be read (a file missing or cut) raises ``_DamagedError``."""
        try:
            self._check_matches(manager, step, abstract, part)
        except CheckpointMismatchError:
            raise
        except Exception as e:  # noqa: BLE001 - a damaged store fails in many ways
            raise _DamagedError(step, _reason(e)) from e
        try:
            return manager.restore(step, args=args)
        except Exception as e:  # noqa: BLE001
            raise _DamagedError(step, _reason(e)) from e

    def restore_latest(self, target) -> tuple[Any, dict, list[tuple[int, str]]]:
        """The whole training state of the newest latest checkpoint that can be read, shaped
        and sharded like ``target`` (its named parts): ``(state, metadata, damaged)``, where
        ``damaged`` lists the newer checkpoints skipped as unreadable, ``(step, reason)``."""
        steps = sorted(self.latest.all_steps(), reverse=True)
        if not steps:
            raise CheckpointNotFoundError(
                f"no checkpoint under {self.latest.directory}: {_NOT_YET['latest']}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                  meta=ocp.args.JsonRestore())
        damaged = []
        for step in steps:
            try:
                restored = self._read(self.latest, step, abstract, args)
            except _DamagedError as e:
                damaged.append((e.step, e.reason))
                continue
            return restored.state, restored.meta, damaged
        raise CheckpointDamagedError(
            f"no checkpoint under {self.latest.directory} can be read ("
            + "; ".join(f"step {s}: {r}" for s, r in damaged) + "); restore the folder from a "
            "backup, or start afresh in a new --workdir")

    def set_aside(self, step: int) -> Path:
        """Rename the unreadable latest checkpoint at ``step`` to ``<step>.damaged`` (or
        ``.damaged.2``...: kept for inspection, no longer a step orbax counts), so that saving
        resumes below it."""
        folder = self.latest.directory / str(step)
        target, n = folder.with_name(f"{step}.damaged"), 1
        while target.exists():  # set aside at this step before
            n += 1
            target = folder.with_name(f"{step}.damaged.{n}")
        if jax.process_index() == 0 and folder.exists():
            folder.rename(target)
        self.latest.reload()
        return target

    def restore_model(self, which: str, target) -> tuple[Any, dict]:
        """The ``model`` part alone of the newest ``which`` checkpoint, shaped and sharded like
        ``target`` (a model state, arrays or ShapeDtypeStructs); the optimizer's moments are
        not read. Returns ``(model state, metadata)``. An unreadable checkpoint is refused,
        naming the newest intact one of either kind."""
        manager = self._manager(which)
        step = self._step(manager, _NOT_YET[which])
        # A partial restore reads what the target names and ignores the rest.
        abstract = {"model": jax.tree.map(ocp.utils.to_shape_dtype_struct, target)}
        args = ocp.args.Composite(
            state=ocp.args.PyTreeRestore(
                abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
                partial_restore=True),
            meta=ocp.args.JsonRestore())

        def probe(manager, s):
            reader = ocp.CheckpointManager(
                manager.directory, options=ocp.CheckpointManagerOptions(create=False),
                item_handlers={"state": ocp.PyTreeCheckpointHandler(),
                               "meta": ocp.JsonCheckpointHandler()})
            return self._read(reader, s, abstract["model"], args, part="model")

        try:
            restored = probe(manager, step)
        except _DamagedError as e:
            raise CheckpointDamagedError(
                f"the {which} checkpoint (step {step}) under {self.directory} cannot be read "
                f"({e.reason}); {self._alternative(which, step, probe)}") from e
        return restored.state["model"], restored.meta

    def _alternative(self, which: str, step: int, probe) -> str:
        """Which other checkpoint ``probe(manager, step)`` can read, and how to use it."""
        other = "best" if which == "latest" else "latest"
        # The other kind first: a flag away; then an older one of this kind.
        for kind, manager in ((other, self._manager(other)), (which, self._manager(which))):
            for s in sorted(manager.all_steps(), reverse=True):
                if kind == which and s >= step:
                    continue
                try:
                    probe(manager, s)
                except (_DamagedError, CheckpointMismatchError):
                    continue
                if kind == which == "latest":
                    return (f"the previous latest checkpoint (step {s}) is intact: train again "
                            "on this workdir to resume from it")
                return f"the {kind} checkpoint (step {s}) is intact: pass --checkpoint={kind}"
        return "no other checkpoint of this run can be read"

    def wait(self) -> None:
        with self._writing():
            self.latest.wait_until_finished()
            self.best.wait_until_finished()
