"""What a training run tells: rows to ``metrics.jsonl`` and TensorBoard, the printed lines,
the progress and time left, and where its checkpoints are."""

from __future__ import annotations

import ml_collections
import numpy as np
from tqdm import tqdm

from dualattn.evaluation.scores import RATES
from dualattn.run.workdir import RunDir
from dualattn.training.tensorboard import SummaryWriter, flat_hparams


class MetricsLog:
    """Rows to the run's ``metrics.jsonl`` and TensorBoard event files, echoed to stdout.

    Only process 0 (``enabled``) writes. TensorBoard tags are ``train/<key>`` and
    ``eval/<key>``, figures under their own tags; the run's config is its hyperparameters. A
    resumed run drops what was logged after its checkpoint from both.
    """

    def __init__(self, run: RunDir, resume_step: int = 0, enabled: bool = True):
        self.run, self.enabled = run, enabled
        self.tensorboard = (SummaryWriter(run.tensorboard, purge_step=resume_step + 1)
                            if enabled else None)
        if enabled:
            run.truncate_rows_after(resume_step)

    def hparams(self, config: ml_collections.ConfigDict) -> None:
        if self.enabled:
            self.tensorboard.hparams(flat_hparams(config.to_dict()),
                                     [f"eval/{k}" for k in RATES])

    def figure(self, step: int, tag: str, draw) -> None:
        """``draw()``'s image under ``tag`` (drawn by process 0 only)."""
        if self.enabled:
            self.tensorboard.image(step, tag, draw())

    def write(self, kind: str, row: dict, note: str = "") -> None:
        """Append ``row`` (``kind``: "train" or "eval"); ``note`` is added to the printed
        line only."""
        if not self.enabled:
            return
        # Counts stay integers (step, and epoch in evaluation rows); the rest 6 decimals.
        row = {k: int(v) if isinstance(v, (int, np.integer)) else round(float(v), 6)
               for k, v in row.items()}
        self.run.append_row(row)
        self.tensorboard.scalars(row["step"],
                                 {f"{kind}/{k}": v for k, v in row.items() if k != "step"})
        tqdm.write(f"[{kind}] " + " ".join(f"{k}={v:g}" for k, v in row.items()) + note)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def duration(seconds: float) -> str:
    """``1h 02m``, ``4m 05s`` or ``12s``."""
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Progress:
    """Where the run is and when it ends, for the printed lines: the rate is measured from the
    first logged step on (the first step compiles), evaluations included."""

    def __init__(self, total_steps: int):
        self.total, self.first = total_steps, None

    def note(self, step: int, now: float) -> str:
        text = f"  | {step}/{self.total} ({100 * step / self.total:.0f} %)"
        if self.first is None:
            self.first = (step, now)
        elif step > self.first[0]:
            seconds = (now - self.first[1]) / (step - self.first[0]) * (self.total - step)
            text += f", {duration(seconds)} left"
        return text


def checkpoints_line(run: RunDir) -> str:
    """Where the final and the best checkpoint are, the best labelled as chosen on the test
    set (report the final model, or say so)."""
    latest, best = run.checkpoint_steps("latest"), run.checkpoint_steps("best")
    text = (f"checkpoints: the final model (step {latest[-1] if latest else None}) in "
            f"{run.checkpoint_dir('latest')}")
    if best:
        mAP = run.logged_evaluations(best[-1]).get(best[-1])  # noqa: N806
        text += ("; the best test mAP" + (f" ({100 * mAP:.2f} %)" if mAP is not None else "")
                 + f" at step {best[-1]} in {run.checkpoint_dir('best')}, chosen on the test "
                 "set")
    return text
