"""The command line shared by every entry point (train, evaluate, embed, export, convert,
compare).

``run(main)`` starts an absl app with our flag parser and turns every error a user can cause
into one ``error: ...`` line (bad flags, unknown config keys, a config file that does not
load, usage errors, ``dualattn.errors.UserError`` and the dataset builders'
``DatasetLayoutError``), with exit status 1 and that line last on stderr. Before ``main``
runs, the process gets our XLA:CPU flags (``dualattn.run.xla_flags``), quiet library logging
and, in a multi-process launch, its place in the distributed run.
"""

from __future__ import annotations

import errno
import logging as logging_std
import os
import re
import sys
import threading
import traceback
import warnings
from pathlib import Path

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from configs import saved
from data_pipeline.datasets import DatasetLayoutError
from dualattn.errors import UserError
from dualattn.run import xla_flags
from dualattn.run.checkpoint import (
    CheckpointDamagedError,
    CheckpointMismatchError,
    CheckpointWriteError,
)
from dualattn.run.workdir import RunDir

FLAGS = flags.FLAGS

USER_ERRORS = (UserError, DatasetLayoutError)

# Operating-system errors that the machine, not the program, causes: a full disk or quota, a
# file-size limit, a read-only or unwritable path, too many open files, failed I/O.
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES,
                      errno.EPERM, errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EIO}


def environment_message(error: OSError) -> str:
    """One line for an operating-system error the environment caused."""
    where = f" ({error.filename})" if error.filename else ""
    return (f"{error.strerror or error}{where}; what was written before is intact. Fix the "
            "cause (a full disk: free space; a limit: raise it), then run the same command "
            "again")


def define_config_flag(help_text: str = "The run's configuration file.") -> None:
    config_flags.DEFINE_config_file("config", None, help_text, lock_config=True)


def define_workdir_flag(help_text: str = "The run's directory (holding checkpoints/).") -> None:
    flags.DEFINE_string("workdir", None, help_text)


def require(*names: str) -> None:
    """Stop with a usage error unless each named flag was given."""
    missing = [f"--{n}" for n in names if getattr(FLAGS, n) is None]
    if missing:
        raise app.UsageError(
            f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} required"
            + (" (--config may be left out for a --workdir holding the config.json of its "
               "training run)" if "--config" in missing and "workdir" in FLAGS else ""))


def _flag_value(argv: list[str], name: str) -> str | None:
    """The value of ``--name=V`` or ``--name V`` in ``argv`` (the last one given), else None."""
    value = None
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{name}="):
            value = arg.split("=", 1)[1]
        elif arg == f"--{name}" and i + 1 < len(argv):
            value = argv[i + 1]
    return value


def with_saved_config(argv: list[str]) -> list[str]:
    """``argv`` with ``--config`` pointing at the run's saved config when ``--workdir`` names a
    run that has one and no ``--config`` was given (``configs/saved.py``)."""
    if any(a == "--config" or a.startswith("--config=") for a in argv):
        return argv
    workdir = _flag_value(argv, "workdir")
    if workdir is None or not RunDir(workdir).config.is_file():
        return argv
    path = RunDir(workdir).config
    try:  # read once here, so that a damaged file is one clear line (absl's would not be)
        saved.get_config(str(path))
    except saved.SavedConfigError as e:
        raise SystemExit(f"error: {e}") from None
    return [argv[0], f"--config={saved.__file__}:{path}", *argv[1:]]


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, ending every bad flag in one clear line rather than a traceback; a run's
    saved config stands in for a missing ``--config`` (``with_saved_config``)."""
    argv = with_saved_config(argv)
    try:
        rest = FLAGS(argv)
    except flags.Error as e:  # wrong type or malformed value
        raise SystemExit(f"error: bad flag value: {' '.join(str(e).split())}") from None
    except AttributeError as e:  # raised by ConfigDict for an unknown --config.* key
        if not any(a.startswith("--config.") for a in argv):  # ... or by the file's own code
            raise SystemExit(config_file_message(argv, e)) from None
        raise SystemExit(unknown_key_message(str(e), argv)) from None
    except Exception as e:  # noqa: BLE001 - the config file's own code failed to run
        raise SystemExit(config_file_message(argv, e)) from None
    check_config_loaded()
    return rest


def config_file_message(argv: list[str], error: BaseException) -> str:
    """A config file that raised while loading (a syntax error, a failing import, an error in
    its ``get_config``) as one line naming the file, the line and the error."""
    path = (_flag_value(argv, "config") or "").split(":", 1)[0]
    line = getattr(error, "lineno", None) if isinstance(error, SyntaxError) else None
    for frame in traceback.extract_tb(error.__traceback__):
        if path and Path(frame.filename).resolve() == Path(path).resolve():
            line = frame.lineno
    where = f"{path}, line {line}" if line else path
    detail = error.msg if isinstance(error, SyntaxError) else str(error)
    return (f"error: the config file {where} does not load ({type(error).__name__}: "
            f"{' '.join(detail.split())[:200]}); fix it, or pass --config=configs/NAME.py "
            "(configs/ holds the shipped ones)")


def unknown_key_message(error: str, argv: list[str]) -> str:
    """ConfigDict's unknown-key error (a quoted key, perhaps with a suggestion) as one line."""
    overrides = " ".join(a.split("=")[0] for a in argv if a.startswith("--config."))
    key = re.search(r"[A-Za-z_][A-Za-z0-9_]*", error)
    suggestion = re.search(r'Did you mean "([^"]+)"', error)
    return (f"error: unknown config key '{key.group(0) if key else error}' in {overrides}"
            + (f' (did you mean "{suggestion.group(1)}"?)' if suggestion else "")
            + "; every key and its default is listed in configs/common.py")


def check_config_loaded() -> None:
    """ml_collections defers a config file's load failure (missing file, error in it) to the
    first use of the config; report it now, in one line."""
    if "config" not in FLAGS or FLAGS["config"].value is None:
        return
    try:
        FLAGS["config"].value.keys()
    except OSError as e:
        reason = str(e).strip().splitlines()[-1].strip()
        raise SystemExit(f"error: cannot load the config file {FLAGS['config'].config_filename} "
                         f"({reason}); "
                         "pass --config=configs/NAME.py (configs/ holds the shipped ones)"
                         ) from None


def initialize_distributed() -> None:
    """Join a multi-process run: under SLURM with more than one task (one per node), everything
    is detected; a hand launch sets JAX_COORDINATOR_ADDRESS (host:port of process 0),
    JAX_NUM_PROCESSES and JAX_PROCESS_ID. A lone process does nothing."""
    env = os.environ
    if env.get("JAX_COORDINATOR_ADDRESS") and env.get("JAX_NUM_PROCESSES"):
        jax.distributed.initialize(env["JAX_COORDINATOR_ADDRESS"],
                                   num_processes=int(env["JAX_NUM_PROCESSES"]),
                                   process_id=int(env["JAX_PROCESS_ID"]))
    elif env.get("SLURM_NTASKS", "1") != "1" or env.get("JAX_COORDINATOR_ADDRESS"):
        jax.distributed.initialize()


def quiet_background_tracebacks() -> None:
    """Orbax logs a failed background save (e.g. a full disk) with a traceback per thread
    before the error reaches us; keep those records to their first line, since the
    CheckpointWriteError that follows says what happened and what to do."""
    class FirstLineOnly(logging_std.Filter):
        def filter(self, record):
            if record.exc_info and record.levelno >= logging_std.ERROR:
                record.msg, record.args = str(record.getMessage()).splitlines()[0], ()
                record.exc_info = record.exc_text = None
            return True

    class NoReadNoise(logging_std.Filter):
        """asyncio's "Task exception was never retrieved" for the reads a failed checkpoint
        read left behind (``_READ_NOISE``): dropped, the failure is reported once."""
        def filter(self, record):
            error = record.exc_info[1] if record.exc_info else None
            text = f"{record.getMessage()} {error}"
            return not any(noise in text for noise in _READ_NOISE)

    logging_std.getLogger("absl").addFilter(FirstLineOnly())
    logging_std.getLogger("asyncio").addFilter(NoReadNoise())
    logging_std.getLogger("asyncio").addFilter(FirstLineOnly())


def quiet_thread_errors() -> None:
    """A background writer (tensorboardX's event thread, say) that hits a full disk or a
    file-size limit dies with a traceback on stderr while the main thread goes on to fail at
    its own next write with the one line that matters; print that thread's error as one
    warning line instead."""
    default = threading.excepthook

    def hook(args):
        error = args.exc_value
        if isinstance(error, OSError) and error.errno in ENVIRONMENT_ERRNOS:
            where = f" ({error.filename})" if error.filename else ""
            sys.stderr.write(f"warning: a background writer ({args.thread.name}) stopped: "
                             f"{error.strerror or error}{where}\n")
            return
        default(args)

    threading.excepthook = hook


# What orbax's read path prints from tensorstore's callbacks after a read has failed (the
# failure itself reaches us as an exception): the reading error once per array, and the
# callbacks that then find the read's event loop closed.
_READ_NOISE = ("Event loop is closed", "Encountered error while reading array index")


def quiet_read_noise() -> None:
    """Keep tensorstore's callback tracebacks out of stderr: after a checkpoint read fails
    (a damaged file), each array still being read reports as an unraisable exception, a few
    hundred tracebacks before the one line that says what happened and what was done."""
    default = sys.unraisablehook

    def hook(unraisable):
        if any(str(unraisable.exc_value).startswith(noise) for noise in _READ_NOISE):
            return
        default(unraisable)

    sys.unraisablehook = hook


def exit_quietly(error: Exception) -> None:
    """Print ``error`` as the last line and leave at once.

    After a failed checkpoint write or restore, orbax's background threads (its writers, and
    the asyncio loop tensorstore reads with) keep printing tracebacks, even while the
    interpreter shuts down ("Event loop is closed"). Everything of ours is closed and flushed
    by now: silence stderr, write the one line that matters last, and exit. It starts a line
    of its own: a thread may have been cut off mid-line.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    message = os.dup(2)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
    os.write(message, f"\nerror: {error}\n".encode())
    os._exit(1)


def run(main, *, positional: bool = False, distributed: bool = True) -> None:
    """``app.run(main)`` with our flag parser, process set-up and one-line user errors.
    ``positional``: ``main`` reads arguments after the flags itself (else they are refused)."""
    def guarded(argv):
        if len(argv) > 1 and not positional:
            sys.exit(f"error: unexpected arguments {argv[1:]} (see --help)")
        logging.set_verbosity(logging.WARNING)  # orbax and grain log every save at INFO
        # A warning is one line; Python's default format echoes the source line that warned.
        warnings.formatwarning = lambda message, *_args, **_kw: f"warning: {message}\n"
        if distributed:
            initialize_distributed()
        quiet_background_tracebacks()
        quiet_thread_errors()
        quiet_read_noise()
        try:
            return main(argv)
        except app.UsageError as e:  # absl would print the whole module docstring
            sys.exit(f"error: {e} (see --help)")
        except (CheckpointWriteError, CheckpointMismatchError, CheckpointDamagedError) as e:
            exit_quietly(e)
        except USER_ERRORS as e:
            sys.exit(f"error: {e}")
        except OSError as e:
            if e.errno not in ENVIRONMENT_ERRNOS:
                raise
            exit_quietly(environment_message(e))
        except MemoryError:
            exit_quietly("out of memory; lower input.eval_batch_size (or input.p for training), "
                         "or free memory, then run the same command again")

    xla_flags.prefer_cpu_flags()  # before anything starts JAX's backend
    app.run(guarded, flags_parser=parse_flags)

