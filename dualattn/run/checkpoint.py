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


def _paths(tree, prefix: str = ""):
    """'a/b/value'-style paths of the leaves of orbax's nested-dict metadata tree."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _paths(v, f"{prefix}/{k}" if prefix else str(k))
    else:
        yield prefix


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

    def metadata(self, which: str) -> dict | None:
        """The newest ``which`` checkpoint's metadata, or None when there is none."""
        manager = self._manager(which)
        step = manager.latest_step()
        if step is None:
            return None
        return dict(manager.restore(step, args=ocp.args.Composite(
            meta=ocp.args.JsonRestore())).meta)

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
    @contextlib.contextmanager
    def _matching(directory: Path, step: int):
        """Turn orbax's structure and shape errors into one CheckpointMismatchError."""
        try:
            yield
        except (ValueError, KeyError, TypeError) as e:
            detail = " ".join(str(e).split())[:300]  # orbax's message spans many lines
            raise CheckpointMismatchError(
                f"the checkpoint at {directory}/{step} does not match this model "
                f"configuration ({type(e).__name__}: {detail}); use the config that wrote "
                "it, or a new --workdir to start afresh") from e

    def restore_latest(self, target) -> tuple[Any, dict]:
        """The whole training state of the newest latest checkpoint, shaped and sharded like
        ``target`` (its named parts): ``(state, metadata)``."""
        step = self._step(self.latest, _NOT_YET["latest"])
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        with self._matching(self.latest.directory, step):
            restored = self.latest.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        return restored.state, restored.meta

    def restore_model(self, which: str, target) -> tuple[Any, dict]:
        """The ``model`` part alone of the newest ``which`` checkpoint, shaped and sharded like
        ``target`` (a model state, arrays or ShapeDtypeStructs); the optimizer's moments are
        not read. Returns ``(model state, metadata)``."""
        manager = self._manager(which)
        step = self._step(manager, _NOT_YET[which])
        reader = ocp.CheckpointManager(
            manager.directory, options=ocp.CheckpointManagerOptions(create=False),
            item_handlers={"state": ocp.PyTreeCheckpointHandler(),
                           "meta": ocp.JsonCheckpointHandler()})
        abstract = {"model": jax.tree.map(ocp.utils.to_shape_dtype_struct, target)}
        # A partial restore reads what the target names and ignores the rest: check first that
        # the checkpoint's model has exactly the target's variables.
        stored_tree = manager.item_metadata(step)["state"]
        stored = set(_paths(stored_tree.get("model", {})))
        wanted = {"/".join(_key_name(k) for k in path[1:])
                  for path, _ in jax.tree_util.tree_flatten_with_path(abstract)[0]}
        if stored != wanted:
            extra, missing = sorted(stored - wanted), sorted(wanted - stored)
            raise CheckpointMismatchError(
                f"the checkpoint at {manager.directory}/{step} does not match this model "
                f"configuration ({len(extra)} variable(s) only in the checkpoint, e.g. "
                f"{extra[:3]}; {len(missing)} only in the model, e.g. {missing[:3]}); use the "
                "config that wrote it")
        with self._matching(manager.directory, step):
            restored = reader.restore(step, args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(
                    abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
                    partial_restore=True),
                meta=ocp.args.JsonRestore()))
        return restored.state["model"], restored.meta

    def wait(self) -> None:
        with self._writing():
            self.latest.wait_until_finished()
            self.best.wait_until_finished()
