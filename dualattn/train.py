"""Train and evaluate the ReID network: ``python -m dualattn.train --config C --workdir W``.

One program for one device, many devices and many hosts: the jitted train step runs over a
``Mesh`` with the batch sharded on its ``data`` axis and the state replicated, so BatchNorm
statistics and batch-hard triplet mining see the *global* batch whatever the device count.
Each process reads only its own slice of every global batch. Augmentation runs inside the
step, on the device.

The workdir receives ``config.json`` (the resolved config, which later commands given only
``--workdir`` use), ``metrics.jsonl`` (one JSON object per logged training step and per
evaluation), the same scalars as TensorBoard event files in ``tensorboard/``, and
``checkpoints/latest`` and ``checkpoints/best`` (by mAP). Started again on
the same workdir, training resumes from the latest checkpoint: data order and augmentation
randomness are functions of (seed, step), so the resumed run continues exactly.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from tqdm import tqdm

from configs import saved
from data_pipeline.input_pipeline import train_dataset
from dualattn import checkpoint, cli, preemption
from dualattn.augment import AugmentConfig, augment
from dualattn.baselines import (colour_histogram_scores, context_line, load_context,
                                save_context)
from dualattn.config_check import check_config, check_test_split
from dualattn.data import load_data
from dualattn.errors import UserError
from dualattn.evaluation import (RATES, describe, evaluate_features, make_eval_fn,
                                 query_gallery_features, rates, score_features)
from dualattn.losses import objective
from dualattn.mesh import data_parallel_shardings
from dualattn.report import REPORT_FILE, RunFigures, read_rows
from dualattn.state import create_train_state, model_part
from dualattn.summary_writer import SummaryWriter, flat_hparams
from dualattn.visualize import ranked_lists


def augment_config(config: ml_collections.ConfigDict) -> AugmentConfig:
    a = config.augment
    return AugmentConfig(flip=a.flip, translate=a.translate, rotate_degrees=a.rotate_degrees,
                         erase_prob=a.erase_prob)


def train_step(graphdef, state, images, labels, rng, *, config, aug_cfg, schedule):
    """One optimizer step on a global batch; returns the new state and scalar metrics."""
    model, optimizer = nnx.merge(graphdef, state)
    x = augment(rng, images, aug_cfg)

    def loss_fn(model):
        out = model(x, train=True)
        parts = objective(out.logits, out.features, labels, config.loss)
        return parts.total, (parts, out.logits)

    (_, (parts, logits)), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    step = optimizer.step[...]
    optimizer.update(model, grads)
    metrics = {
        "loss": parts.total, "cross_entropy": parts.cross_entropy, "triplet": parts.triplet,
        "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels), "lr": schedule(step),
    }
    return nnx.state((model, optimizer)), metrics


def make_train_step(config, schedule, aug_cfg: AugmentConfig | None = None):
    """``train_step`` jitted with the config (augmentation ``aug_cfg`` or the config's), the
    graphdef static and the state donated: ``step_fn(graphdef, state, images, labels, rng)``."""
    aug_cfg = augment_config(config) if aug_cfg is None else aug_cfg
    return jax.jit(functools.partial(train_step, config=config, aug_cfg=aug_cfg,
                                     schedule=schedule), static_argnums=0, donate_argnums=1)


# ---------------------------------------------------------------------------------------------
# Logging


class MetricsLog:
    """Rows to ``workdir/metrics.jsonl`` and TensorBoard event files, echoed to stdout.

    Only process 0 writes. TensorBoard tags are ``train/<key>`` and ``eval/<key>``, the
    ranked-list figure ``eval/ranked_lists``; the run's config is its hyperparameters. A
    resumed run drops what was logged after its checkpoint from both.
    """

    def __init__(self, workdir: Path, resume_step: int = 0):
        self.enabled = jax.process_index() == 0
        self.path = workdir / "metrics.jsonl"
        self.tensorboard = (SummaryWriter(workdir / "tensorboard", purge_step=resume_step + 1)
                            if self.enabled else None)
        if self.enabled and self.path.exists():
            self._truncate_after(resume_step)

    def hparams(self, config: ml_collections.ConfigDict) -> None:
        if self.enabled:
            self.tensorboard.hparams(flat_hparams(config.to_dict()),
                                     [f"eval/{k}" for k in RATES])

    def figure(self, step: int, tag: str, draw) -> None:
        """``draw()``'s image under ``tag`` (drawn by process 0 only)."""
        if self.enabled:
            self.tensorboard.image(step, tag, draw())

    def _truncate_after(self, step: int) -> None:
        """Drop rows logged after ``step`` by a run that crashed before its next checkpoint:
        the resumed run logs those steps again. Rewritten atomically (temp file + rename)."""
        lines = self.path.read_text().splitlines(keepends=True)
        keep = []
        for line in lines:
            try:
                if json.loads(line)["step"] <= step:
                    keep.append(line)
            except (ValueError, KeyError):  # a torn last line from a kill mid-write
                continue
        if len(keep) != len(lines):
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(keep))
            tmp.replace(self.path)

    def write(self, kind: str, row: dict, note: str = "") -> None:
        """Append ``row``; ``note`` is added to the printed line only."""
        if not self.enabled:
            return
        # Counts stay integers (step, and epoch in evaluation rows); the rest 6 decimals.
        row = {k: int(v) if isinstance(v, (int, np.integer)) else round(float(v), 6)
               for k, v in row.items()}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        step = int(row["step"])
        self.tensorboard.scalars(step, {f"{kind}/{k}": v for k, v in row.items() if k != "step"})
        tqdm.write(f"[{kind}] " + " ".join(f"{k}={v:g}" for k, v in row.items()) + note)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


# ---------------------------------------------------------------------------------------------
# The loop


class DivergedError(UserError, FloatingPointError):
    """The loss became NaN or Inf; the last good checkpoint is kept."""


def check_finite(metrics: dict, step: int, checkpoint_dir: Path) -> dict:
    """``metrics`` on the host; raises FloatingPointError naming the step if the loss is not
    finite. Called before any log row or checkpoint: non-finite parameters give a non-finite
    loss at every later step, so this keeps bad states out of checkpoints."""
    metrics = jax.device_get(metrics)
    if not np.isfinite(metrics["loss"]):
        raise DivergedError(f"loss is {metrics['loss']} at step {step}; the last good "
                                 f"checkpoint is kept in {checkpoint_dir}")
    return metrics


class WorkdirError(UserError, OSError):
    """The workdir cannot be created or written."""


def prepare_workdir(workdir: Path) -> None:
    """Create ``workdir`` and prove it writable before any work is spent."""
    probe = workdir / f".write_test.{jax.process_index()}.{os.getpid()}"
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise WorkdirError(f"--workdir {workdir} is not writable ({e.strerror or e}); choose "
                           "another folder or fix its permissions") from e


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


def measure_context(config, data, eval_fn, graphdef, state, batch_sharding,
                    workdir: Path) -> None:
    """The untrained network's and colour histograms' scores on the test split, kept in the
    workdir for the final ``context:`` line (``eval.context``)."""
    scores = evaluate_features(*query_gallery_features(
        eval_fn, *model_part(graphdef, state), data, config, batch_sharding), data, config)
    untrained = rates(scores)
    if jax.process_index() == 0:
        colour = colour_histogram_scores(data)
        save_context(workdir, {"untrained": {**untrained, "cmc": scores["cmc"].tolist()},
                               "colour_histograms": colour})
        print(f"before training: mAP {100 * untrained['mAP']:.2f} % (rank-1 "
              f"{100 * untrained['rank1']:.2f} %) for the untrained network, "
              f"{100 * colour['mAP']:.2f} % ({100 * colour['rank1']:.2f} %) for colour "
              "histograms", flush=True)


def duration(seconds: float) -> str:
    """``1h 02m``, ``4m 05s`` or ``12s``."""
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


@contextlib.contextmanager
def saves_finished(ckpt: checkpoint.Checkpointer):
    """Whatever error ends the block, the checkpoints it started are completed first: the
    epoch saved just before a failing evaluation is kept."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):  # the error being raised is the one to report
            ckpt.wait()
        raise


def evaluation_due(config, step: int, steps_per_epoch: int) -> bool:
    """Whether training evaluates at ``step``: every ``eval.every_epochs`` and at the end."""
    epoch, last = divmod(step, steps_per_epoch)
    return (step > 0 and last == 0
            and (epoch % config.eval.every_epochs == 0 or epoch == config.optim.epochs))


def logged_evaluations(workdir: Path, upto: int) -> dict[int, float]:
    """step -> mAP of the evaluation rows of ``workdir/metrics.jsonl`` up to step ``upto``."""
    return {int(r["step"]): float(r["mAP"]) for r in read_rows(workdir)
            if "mAP" in r and r["step"] <= upto}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict:
    """Train for ``config.optim.epochs`` epochs (resuming if the workdir has a checkpoint) and
    return the final evaluation. SIGTERM/SIGINT save the latest state and raise
    ``preemption.TrainingStopped``."""
    workdir = Path(workdir)
    check_config(config, jax.device_count())
    prepare_workdir(workdir)
    data = load_data(config)
    check_test_split(data.ids, config.dataset.root)
    spe = data.sampler.steps_per_epoch
    total_steps = config.optim.epochs * spe

    batch_sharding, replicated = data_parallel_shardings()
    if jax.process_index() == 0:
        sizes = ", ".join(f"{len(data.sources[s])} {s}" for s in ("train", "query", "gallery"))
        print(f"{config.dataset.name}: {sizes} images, {data.num_classes} training "
              f"identities; {total_steps} steps ({config.optim.epochs} epochs of {spe}) of "
              f"{data.sampler.batch_size} images on {jax.device_count()} "
              f"{jax.default_backend()} device(s); logs: {workdir / 'metrics.jsonl'} and "
              f"{workdir / 'tensorboard'}", flush=True)

    graphdef, state, schedule = create_train_state(config, data.num_classes, spe)
    state = jax.device_put(state, replicated)

    def latest_meta(step: int) -> dict:
        return {"step": step, "best_mAP": best_map, "num_classes": data.num_classes}

    ckpt = checkpoint.Checkpointer(workdir / "checkpoints")
    start_step, best_map, evaluated = 0, -1.0, True
    if ckpt.latest_step() is not None:
        state, meta = ckpt.restore_latest(state)
        start_step = meta["step"]
        # The checkpoint is written before its epoch's evaluation: the log says whether that
        # evaluation finished, and the best mAP so far.
        logged = logged_evaluations(workdir, start_step)
        best_map = max([meta["best_mAP"], *logged.values()])
        evaluated = start_step in logged or not evaluation_due(config, start_step, spe)
        print(f"resumed from step {start_step} ("
              + (f"best test mAP so far {100 * best_map:.2f} %)" if best_map >= 0
                 else "not evaluated yet)"))
    if jax.process_index() == 0:  # after the restore: a mismatching config never replaces it
        saved.save(config, workdir)

    step_fn = make_train_step(config, schedule)
    eval_fn = make_eval_fn(config)
    log = MetricsLog(workdir, start_step)
    log.hparams(config)
    base_rng = jax.random.key(config.seed)

    batches = train_dataset(data.sources["train"], data.sampler,
                            image_size=(config.input.height, config.input.width),
                            start_step=start_step, num_steps=total_steps,
                            process_index=jax.process_index(), process_count=jax.process_count(),
                            num_workers=config.input.num_workers)
    features = None  # the last evaluation's (query, gallery) features

    def evaluate_at(step: int) -> dict:
        """Score the model, log it, and keep it as the best checkpoint if it is."""
        nonlocal best_map, features
        q, g = features = query_gallery_features(eval_fn, *model_part(graphdef, state), data,
                                                 config, batch_sharding)
        result = score_features(q, g, data, config)
        log.write("eval", {"step": step, "epoch": step // spe, **result})
        if config.eval.ranked_list_queries:
            log.figure(step, "eval/ranked_lists", lambda: ranked_lists(
                config, data, q, g, config.eval.ranked_list_queries))
        if result["mAP"] > best_map:
            best_map = result["mAP"]
            ckpt.save_best(step, state, {**result, "num_classes": data.num_classes})
        return result

    if config.eval.context and start_step == 0:
        measure_context(config, data, eval_fn, graphdef, state, batch_sharding, workdir)
    result = {}
    progress = Progress(total_steps)
    if not evaluated:  # the run stopped during the evaluation after its last checkpoint
        result = evaluate_at(start_step)
    tic, seen = time.perf_counter(), 0
    step = start_step
    # One bar per epoch, on an interactive terminal of process 0 only (not in CI logs).
    show_bar = jax.process_index() == 0 and sys.stdout.isatty()
    bar = tqdm(total=spe, initial=step % spe, desc=f"epoch {step // spe + 1}",
               disable=not show_bar, leave=False)
    # Whatever ends the loop (the end, a signal, an error), the logs are complete on disk.
    with preemption.StopRequest() as stop, contextlib.closing(log), bar, saves_finished(ckpt):
        for batch in batches:
            images = jax.make_array_from_process_local_data(batch_sharding, batch["image"])
            labels = jax.make_array_from_process_local_data(batch_sharding, batch["label"])
            state, metrics = step_fn(graphdef, state, images, labels,
                                     jax.random.fold_in(base_rng, step))
            step += 1
            seen += data.sampler.batch_size
            bar.update()
            epoch_end = step % spe == 0
            sync_point = step % config.log_every_steps == 0 or epoch_end
            if sync_point:
                metrics = check_finite(metrics, step, ckpt.directory)
            if step % config.log_every_steps == 0 or step == total_steps:
                now = time.perf_counter()
                log.write("train", {"step": step, "epoch": step / spe, **metrics,
                                    "images_per_s": seen / (now - tic)},
                          progress.note(step, now))
                tic, seen = now, 0
            epoch = step // spe
            if epoch_end:
                bar.reset()
                bar.set_description(f"epoch {epoch + 1}")
            # The checkpoint first: an evaluation that fails or is killed loses no training.
            if epoch_end and (epoch % config.checkpoint_every_epochs == 0 or step == total_steps):
                ckpt.save_latest(step, state, latest_meta(step))
            if epoch_end and evaluation_due(config, step, spe):
                result = evaluate_at(step)
            if stop.requested(at_sync_point=sync_point):
                check_finite(metrics, step, ckpt.directory)
                if ckpt.latest_step() != step:
                    ckpt.save_latest(step, state, latest_meta(step))
                ckpt.wait()
                raise preemption.TrainingStopped(stop.signum, step, ckpt.directory)
    ckpt.wait()

    if not result:  # resumed at the end: nothing left to train, report the final state
        features = query_gallery_features(eval_fn, *model_part(graphdef, state), data, config,
                                          batch_sharding)
        result = score_features(*features, data, config)
    if config.eval.report and jax.process_count() == 1:  # multi-process: evaluate --report
        RunFigures(config, workdir, "final", step, result, features, data,
                   *model_part(graphdef, state)).write(workdir / REPORT_FILE)
    return result


def main(argv):
    cli.require("config", "workdir")
    try:
        result = train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except preemption.TrainingStopped as e:
        print(e)
        sys.exit(128 + e.signum)
    print("final: " + describe(result))
    if jax.process_index() == 0:
        context = load_context(Path(FLAGS.workdir))
        if context:
            print(context_line(result, context))
        print(checkpoints_summary(Path(FLAGS.workdir)))
        if FLAGS.config.eval.report and jax.process_count() == 1:
            print(f"report: {Path(FLAGS.workdir) / REPORT_FILE} (training curves, scores, "
                  "CMC, ranked lists, attention maps; open it in a browser)")
        elif FLAGS.config.eval.report:
            print(f"report: run python -m dualattn.evaluate --workdir {FLAGS.workdir} "
                  "--report in one process")


def checkpoints_summary(workdir: Path) -> str:
    """Where the final and the best checkpoint are, the best labelled as chosen on the test
    set (report the final model, or say so). Read from the folders' names: process 0 alone
    prints it, and an orbax manager would wait for the other processes."""
    folder = (workdir / "checkpoints").absolute()

    def newest(which: str) -> int | None:
        steps = [int(p.name) for p in (folder / which).glob("*") if p.name.isdigit()]
        return max(steps, default=None)

    text = f"checkpoints: the final model (step {newest('latest')}) in {folder / 'latest'}"
    best = newest("best")
    if best is not None:
        mAP = logged_evaluations(workdir, best).get(best)
        text += ("; the best test mAP" + (f" ({100 * mAP:.2f} %)" if mAP is not None else "")
                 + f" at step {best} in {folder / 'best'}, chosen on the test set")
    return text


FLAGS = cli.FLAGS


def command() -> None:
    """The ``dualattn-train`` console script: ``python -m dualattn.train``."""
    cli.define_config_flag("Training configuration file.")
    cli.define_workdir_flag("Directory for checkpoints and metrics.")
    cli.run(main)


if __name__ == "__main__":
    command()
