"""SIGTERM and SIGINT as a request to save and stop, agreed by every process.

Clusters preempt with SIGTERM (SLURM sends it to every task, then SIGKILL after its grace
period); people press Ctrl-C. Either should cost nothing: the handler only records the signal,
the training loop finishes its current step, saves the latest checkpoint at that step and
raises ``TrainingStopped``, and the entry point exits with ``128 + signal number`` (the shell's
convention for "ended by this signal") so that job scripts can tell a stop from a finished run.
A second signal of the same kind acts as it normally would (Ctrl-C twice stops at once).

With several processes the signal may reach them at different steps, and all must save at the
same one, so they agree by an all-gather of their flags; that is a host synchronisation, so it
happens only where the loop synchronises anyway (``at_sync_point``).
"""

from __future__ import annotations

import signal
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingStopped(Exception):  # noqa: N818 - a stop, not an error
    """Training stopped on a signal after saving a checkpoint at ``step``."""

    def __init__(self, signum: int, step: int, directory):
        self.signum, self.step = signum, step
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name} at step {step}; the checkpoint is saved in "
                         f"{directory}. Run the same command to resume from it")


class StopRequest:
    """Context manager installing the handlers (main thread only) and restoring them."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, _frame) -> None:
        self.signum = signum
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))  # the next one acts

    def requested(self, at_sync_point: bool) -> bool:
        """Whether to stop now. Single process: whenever a signal has arrived. Several: only
        at sync points, when any process has received one (all then stop together)."""
        if jax.process_count() == 1:
            return self.signum is not None
        if not at_sync_point:
            return False
        flags = multihost_utils.process_allgather(np.int32(self.signum or 0))
        received = np.asarray(flags).ravel()
        if self.signum is None and received.any():
            self.signum = int(received[received > 0][0])
        return bool(received.any())
