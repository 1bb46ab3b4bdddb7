"""The training loop: ``train_and_evaluate(config, workdir)`` trains, checkpoints, evaluates and
resumes one run.

One program for one device, many devices and many hosts: the jitted step
(``dualattn.training.step``) runs over a ``Mesh`` with the batch sharded and the state
replicated, and each process reads only its own slice of every global batch. Started again on
the same workdir, training resumes from the latest checkpoint: data order and augmentation
randomness are functions of (seed, step), so the resumed run continues exactly. SIGTERM and
SIGINT save the latest state and raise ``preemption.TrainingStopped``.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from configs import saved
from data_pipeline.input_pipeline import train_dataset
from dualattn.errors import UserError
from dualattn.evaluation.baselines import describe_baselines, measure_baselines
from dualattn.evaluation.evaluator import ReIDEvaluator
from dualattn.evaluation.figures import ranked_lists
from dualattn.evaluation.report import write_run_report
from dualattn.evaluation.scores import Scores
from dualattn.run.checkpoint import Checkpointer
from dualattn.run.data import Data, load_data
from dualattn.run.mesh import data_parallel_shardings
from dualattn.run.model import InferenceModel, create_train_state
from dualattn.run.record import RunRecordError, check_length, check_settings
from dualattn.run.workdir import RunDir, atomic_write
from dualattn.training import preemption
from dualattn.training.log import MetricsLog, Progress
from dualattn.training.losses import TERMS
from dualattn.training.step import make_train_step


class DivergedError(UserError, FloatingPointError):
    """The loss became NaN or Inf; the last good checkpoint is kept."""


def check_finite(metrics: dict, step: int, checkpoint_dir: Path) -> dict:
    """``metrics`` on the host; raises ``DivergedError`` naming the step if the loss is not
    finite. Called before any log row or checkpoint: non-finite parameters give a non-finite
    loss at every later step, so this keeps bad states out of checkpoints."""
    metrics = jax.device_get(metrics)
    if not np.isfinite(metrics["loss"]):
        raise DivergedError(f"loss is {metrics['loss']} at step {step}; the last good "
                            f"checkpoint is kept in {checkpoint_dir}")
    return metrics


def evaluation_due(config, step: int, steps_per_epoch: int) -> bool:
    """Whether training evaluates at ``step``: every ``eval.every_epochs`` and at the end."""
    epoch, within = divmod(step, steps_per_epoch)
    return (step > 0 and within == 0
            and (epoch % config.eval.every_epochs == 0 or epoch == config.optim.epochs))


@contextlib.contextmanager
def saves_finished(ckpt: Checkpointer):
    """Whatever error ends the block, the checkpoints it started are completed first: the
    epoch saved just before a failing evaluation is kept."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):  # the error being raised is the one to report
            ckpt.wait()
        raise


class Trainer:
    """One run's training: its state and step, checkpoints, evaluator, the best mAP so far
    and the last evaluation's scores."""

    def __init__(self, config: ml_collections.ConfigDict, run: RunDir, data: Data):
        self.config, self.run, self.data = config, run, data
        self.steps_per_epoch = data.sampler.steps_per_epoch
        self.total_steps = config.optim.epochs * self.steps_per_epoch
        self.batch_sharding, replicated = data_parallel_shardings()
        self.train = create_train_state(config, data.num_classes, self.steps_per_epoch)
        self.state = jax.device_put(self.train.state, replicated)
        self.ckpt = Checkpointer(run)
        self.evaluator = ReIDEvaluator(config, data, self.batch_sharding)
        self.main_process = jax.process_index() == 0
        self.step, self.best_map, self.scores = 0, -1.0, None

    def model(self) -> InferenceModel:
        """The model part of the current state."""
        return InferenceModel(self.step, self.train.model_graphdef, self.state["model"])

    def restore(self) -> dict[int, float]:
        """Continue from the newest readable latest checkpoint, if there is one, after checking
        that this dataset and length fit the run (``dualattn.run.record``); returns the
        evaluations logged up to it (step -> mAP). The checkpoint is written before its
        epoch's evaluation: the log says whether that evaluation finished, and the best mAP
        so far. Unreadable newer checkpoints are set aside, saying so."""
        newest = self.ckpt.latest_step()
        if newest is None:
            return {}
        check_length(self.config, newest, self.steps_per_epoch, self.run.path)
        self.state, meta, damaged = self.ckpt.restore_latest(self.state)
        for step, reason in damaged:
            kept = self.ckpt.set_aside(step)
            if self.main_process:
                print(f"the checkpoint at step {step} cannot be read ({reason}); set aside as "
                      f"{kept}; resuming from step {meta['step']}, the newest intact one")
        trained_on, now = meta.get("dataset"), self.data.source
        if trained_on and trained_on["digest"] != now["digest"]:
            why = (f"{trained_on['root']}, not {now['root']}" if trained_on["root"] != now["root"]
                   else f"{now['root']} before its files changed ({trained_on['files']} files, "
                        f"{trained_on['bytes']} bytes then; {now['files']} files, "
                        f"{now['bytes']} bytes now)")
            raise RunRecordError(
                f"{self.run.path} was trained on other data: on {why}; resume it on its own "
                "dataset, or train on this one in a new --workdir")
        self.step = int(meta["step"])
        logged = self.run.logged_evaluations(self.step)
        self.best_map = max([meta["best_mAP"], *logged.values()])
        print(f"resumed from step {self.step} ("
              + (f"best test mAP so far {100 * self.best_map:.2f} %)" if self.best_map >= 0
                 else "not evaluated yet)"))
        return logged

    def meta(self) -> dict:
        """What every checkpoint records beside the state: the class count and the dataset's
        fingerprint (``Data.source``)."""
        return {"num_classes": self.data.num_classes, "dataset": self.data.source}

    def save(self) -> None:
        self.ckpt.save_latest(self.step, self.state,
                              {"step": self.step, "best_mAP": self.best_map, **self.meta()})

    def evaluate(self, log: MetricsLog) -> None:
        """Score the model, log it (with its ranked lists), and keep it as the best checkpoint
        if it is."""
        c, step = self.config, self.step
        self.scores = scores = self.evaluator(self.model())
        rates = scores.rates()
        log.write("eval", {"step": step, "epoch": step // self.steps_per_epoch, **rates})
        if c.eval.ranked_list_queries:
            log.figure(step, "eval/ranked_lists", lambda: ranked_lists(
                c, self.data, scores, c.eval.ranked_list_queries))
        if scores.mAP > self.best_map:
            self.best_map = scores.mAP
            self.ckpt.save_best(step, self.state, {**rates, **self.meta()})

    def measure_baselines(self) -> None:
        """The untrained network's and colour histograms' scores, kept in the workdir for the
        final ``baselines:`` line (``eval.baselines``)."""
        baselines = measure_baselines(self.evaluator, self.model())
        if self.main_process:
            self.run.save_baselines(baselines)
            print(describe_baselines(baselines), flush=True)

    def fit(self) -> Scores:
        """Train to ``optim.epochs`` and return the last evaluation's scores."""
        c = self.config
        logged = self.restore()
        if self.main_process:  # after the restore: a mismatching config never replaces it
            atomic_write(self.run.config, saved.to_json(c))
        log = MetricsLog(self.run, self.step, enabled=self.main_process)
        log.hparams(c)
        with contextlib.closing(log), saves_finished(self.ckpt):
            if c.eval.baselines and self.step == 0:
                self.measure_baselines()
            if evaluation_due(c, self.step, self.steps_per_epoch) and self.step not in logged:
                self.evaluate(log)  # the run stopped during its last checkpoint's evaluation
            self.train_steps(log)
        self.ckpt.wait()
        if self.scores is None:  # resumed at the end: nothing left to train
            self.scores = self.evaluator(self.model())
        return self.scores

    def train_steps(self, log: MetricsLog) -> None:
        """The steps from the current one to the last, with their logs, checkpoints and
        evaluations; a stop request saves and raises ``TrainingStopped``."""
        c, spe = self.config, self.steps_per_epoch
        step_fn = make_train_step(c, self.train.schedule)
        base_rng = jax.random.key(c.seed)
        batches = train_dataset(self.data.sources["train"], self.data.sampler,
                                image_size=(c.input.height, c.input.width),
                                start_step=self.step, num_steps=self.total_steps,
                                process_index=jax.process_index(),
                                process_count=jax.process_count(),
                                num_workers=c.input.num_workers)
        progress, tic, seen = Progress(self.total_steps), time.perf_counter(), 0
        # One bar per epoch, on an interactive terminal of process 0 only (not in CI logs).
        bar = tqdm(total=spe, initial=self.step % spe, desc=f"epoch {self.step // spe + 1}",
                   disable=not (self.main_process and sys.stdout.isatty()), leave=False)
        with preemption.StopRequest() as stop, bar:
            for batch in batches:
                images, labels = (jax.make_array_from_process_local_data(
                    self.batch_sharding, batch[k]) for k in ("image", "label"))
                self.state, metrics = step_fn(self.train.graphdef, self.state, images, labels,
                                              jax.random.fold_in(base_rng, self.step))
                self.step += 1
                step, seen = self.step, seen + self.data.sampler.batch_size
                bar.update()
                epoch, within = divmod(step, spe)
                sync_point = step % c.log_every_steps == 0 or within == 0
                if sync_point:
                    metrics = check_finite(metrics, step, self.ckpt.directory)
                if step % c.log_every_steps == 0 or step == self.total_steps:
                    now = time.perf_counter()
                    log.write("train", {"step": step, "epoch": step / spe, **metrics,
                                        "images_per_s": seen / (now - tic)},
                              progress.note(step, now))
                    tic, seen = now, 0
                if within == 0:
                    bar.reset()
                    bar.set_description(f"epoch {epoch + 1}")
                    # The checkpoint first: an evaluation that fails or is killed loses no
                    # training.
                    if epoch % c.checkpoint_every_epochs == 0 or step == self.total_steps:
                        self.save()
                    if evaluation_due(c, step, spe):
                        self.evaluate(log)
                if stop.requested(at_sync_point=sync_point):
                    check_finite(metrics, step, self.ckpt.directory)
                    if self.ckpt.latest_step() != step:
                        self.save()
                    self.ckpt.wait()
                    raise preemption.TrainingStopped(stop.signum, step, self.ckpt.directory)


def start_line(config, data: Data, run: RunDir, total_steps: int) -> str:
    """What the run will do, printed before it starts."""
    sizes = ", ".join(f"{len(data.sources[s])} {s}" for s in ("train", "query", "gallery"))
    spe = data.sampler.steps_per_epoch
    return (f"{config.dataset.name}: {sizes} images, {data.num_classes} training identities; "
            f"{total_steps} steps ({config.optim.epochs} epochs of {spe}) of "
            f"{data.sampler.batch_size} images on {jax.device_count()} "
            f"{jax.default_backend()} device(s); logs: {run.metrics} and {run.tensorboard}")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> Scores:
    """Train for ``config.optim.epochs`` epochs (resuming if the workdir has a checkpoint) and
    return the final evaluation; with ``eval.report``, write the run's report (one process
    only: a multi-process run's report is ``evaluate --report``'s)."""
    run = RunDir(workdir)
    run.prepare(jax.process_index())
    # One trainer per workdir (process 0 holds the lock for a multi-process run).
    with run.exclusive() if jax.process_index() == 0 else contextlib.nullcontext():
        if run.checkpoint_steps("latest") and run.config.is_file():  # before any data is read
            changed = check_settings(run.config.read_text(), config, run.path)
            if changed and jax.process_index() == 0:
                print("resuming with changed settings: " + ", ".join(
                    f"{k} {old!r} -> {new!r}" for k, (old, new) in changed.items()))
        data = load_data(config)
        trainer = Trainer(config, run, data)
        if trainer.main_process:
            print(start_line(config, data, run, trainer.total_steps), flush=True)
        scores = trainer.fit()
        if config.eval.report and jax.process_count() == 1:
            write_run_report(config, run, run.report(), data, "final", trainer.step, scores,
                             trainer.model(), loss_terms=tuple(TERMS))
    return scores
