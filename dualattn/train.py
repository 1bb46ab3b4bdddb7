"""Train and evaluate the ReID network: ``python -m dualattn.train --config C --workdir W``.

One program for one device, many devices and many hosts: the jitted train step runs over a
``Mesh`` with the batch sharded on its ``data`` axis and the state replicated, so BatchNorm
statistics and batch-hard triplet mining see the *global* batch whatever the device count.
Each process reads only its own slice of every global batch. Augmentation runs inside the
step, on the device.

The workdir receives ``metrics.jsonl`` (one JSON object per logged training step and per
evaluation), the same scalars as TensorBoard event files in ``tensorboard/``, and
``checkpoints/latest`` and ``checkpoints/best`` (by mAP). Started again on
the same workdir, training resumes from the latest checkpoint: data order and augmentation
randomness are functions of (seed, step), so the resumed run continues exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging as logging_std
import os
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import app, flags, logging
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from ml_collections import config_flags
from tqdm import tqdm

from data_pipeline import synthetic
from data_pipeline.datasets import DatasetLayoutError, data_sources, prepare, read_columns
from data_pipeline.input_pipeline import eval_dataset, train_dataset
from data_pipeline.sampler import PKSampler
from dualattn import checkpoint, preemption, xla_flags
from dualattn.augment import AugmentConfig, augment, normalize
from dualattn.losses import reid_loss
from dualattn.metrics import compute_distance_matrix, evaluate
from dualattn.models import ReIDNet
from dualattn.pretrained import PretrainedWeightsError, load_backbone_weights
from dualattn.rerank import re_ranking_features
from dualattn.summary_writer import SummaryWriter

# ---------------------------------------------------------------------------------------------
# Data


@dataclasses.dataclass
class Data:
    sources: dict[str, Any]
    sampler: PKSampler
    num_classes: int
    ids: dict[str, tuple[np.ndarray, np.ndarray]]  # "query"/"gallery" -> (pids, camids)


def load_data(config: ml_collections.ConfigDict) -> Data:
    """Prepare the dataset once (generating the synthetic one if asked) and open its splits."""
    ds = config.dataset
    if jax.process_index() == 0:
        if ds.synthetic and not Path(ds.root).exists():
            print(f"generating the synthetic dataset in {ds.root} ...")
            tmp = Path(f"{ds.root}.incomplete")
            synthetic.generate(tmp, train_ids=ds.synthetic_train_ids,
                               test_ids=ds.synthetic_test_ids, seed=config.seed)
            tmp.rename(ds.root)  # a half-written dataset never sits at `root`
        prepare(ds.name, ds.root, ds.data_dir)
    multihost_utils.sync_global_devices("dataset prepared")
    sources = data_sources(prepare(ds.name, ds.root, ds.data_dir, verbose=False))
    (labels,) = read_columns(sources["train"], "label")
    sampler = PKSampler(labels, config.input.p, config.input.k, seed=config.seed)
    ids = {split: read_columns(sources[split], "pid", "camid") for split in ("query", "gallery")}
    return Data(sources=sources, sampler=sampler, num_classes=int(labels.max()) + 1, ids=ids)


# ---------------------------------------------------------------------------------------------
# Model and optimizer


def create_model(config: ml_collections.ConfigDict, num_classes: int) -> ReIDNet:
    return ReIDNet(num_classes, **config.model.to_dict(), rngs=nnx.Rngs(config.seed))


def learning_rate_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int):
    """Linear warmup from ``warmup_factor * lr`` over ``warmup_epochs``, then x``decay_factor``
    at each of ``decay_epochs`` (BoT's schedule, counted in steps)."""
    o = config.optim
    warmup_steps = int(o.warmup_epochs * steps_per_epoch)
    boundaries = {int(e * steps_per_epoch): o.decay_factor for e in o.decay_epochs}
    decayed = optax.piecewise_constant_schedule(o.lr, boundaries)
    warmup = optax.linear_schedule(o.lr * o.warmup_factor, o.lr, max(warmup_steps, 1))

    def schedule(step):
        # optax's piecewise schedule ignores its boundaries for unsigned counts, and NNX's
        # optimizer counts steps in uint32.
        step = jnp.asarray(step, jnp.int32)
        return jnp.where(step < warmup_steps, warmup(step), decayed(step))

    return schedule


def create_optimizer(config: ml_collections.ConfigDict, schedule) -> optax.GradientTransformation:
    """torch ``Adam(lr, weight_decay=wd)``: L2 added to the gradient before Adam's moments."""
    return optax.chain(optax.add_decayed_weights(config.optim.weight_decay),
                       optax.adam(schedule))


def create_train_state(config: ml_collections.ConfigDict, num_classes: int,
                       steps_per_epoch: int, load_pretrained: bool = True):
    """The model (with ``config.pretrained`` backbone weights, if set and ``load_pretrained``)
    and its optimizer as ``(graphdef, state, schedule)`` for the jitted steps."""
    schedule = learning_rate_schedule(config, steps_per_epoch)
    model = create_model(config, num_classes)
    if config.pretrained and load_pretrained:
        counts = load_backbone_weights(model, config.pretrained)
        if jax.process_index() == 0:
            print(f"loaded {counts['loaded']} backbone tensors from {config.pretrained}"
                  + (f"; {counts['fresh_se']} SE tensors start fresh" if counts["fresh_se"]
                     else ""))
            if counts["legacy_senet"]:
                print("note: a legacy (Caffe-style) SE-ResNet file: it strides in each block's "
                      "first 1x1 conv, ours in the 3x3, so these weights initialise rather than "
                      "reproduce that network")
    optimizer = nnx.Optimizer(model, create_optimizer(config, schedule), wrt=nnx.Param)
    graphdef, state = nnx.split((model, optimizer))
    return graphdef, state, schedule


def augment_config(config: ml_collections.ConfigDict) -> AugmentConfig:
    a = config.augment
    return AugmentConfig(flip=a.flip, translate=a.translate, rotate_degrees=a.rotate_degrees,
                         erase_prob=a.erase_prob)


# ---------------------------------------------------------------------------------------------
# Steps


def train_step(graphdef, state, images, labels, rng, *, config, aug_cfg, schedule):
    """One optimizer step on a global batch; returns the new state and scalar metrics."""
    model, optimizer = nnx.merge(graphdef, state)
    x = augment(rng, images, aug_cfg)

    def loss_fn(model):
        out = model(x, train=True)
        parts = reid_loss(out.logits, out.features, labels,
                          label_smoothing=config.loss.label_smoothing, margin=config.loss.margin,
                          ce_weight=config.loss.ce_weight,
                          triplet_weight=config.loss.triplet_weight)
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


def eval_step(graphdef, state, images, *, flip: bool = False, feature: str | None = None):
    """Test features of a uint8 batch; with ``flip``, the mean of the image's and its mirror's."""
    model, _ = nnx.merge(graphdef, state)
    x = normalize(images)
    feats = model(x, train=False, feature=feature)
    if flip:
        feats = (feats + model(x[:, :, ::-1], train=False, feature=feature)) / 2
    return feats


def make_eval_fn(config, feature: str | None = None):
    """The jitted ``eval_step`` with the config's test-time options."""
    return jax.jit(functools.partial(eval_step, flip=config.eval.flip_test, feature=feature),
                   static_argnums=0)


# ---------------------------------------------------------------------------------------------
# Evaluation


def extract_features(eval_fn, graphdef, state, source, config, batch_sharding):
    """Test features of every record of ``source``, in order, gathered on every host."""
    chunks, indices = [], []
    for batch in eval_dataset(source, batch_size=config.input.eval_batch_size,
                              image_size=(config.input.height, config.input.width),
                              process_index=jax.process_index(),
                              process_count=jax.process_count()):
        images = jax.make_array_from_process_local_data(batch_sharding, batch["image"])
        out = multihost_utils.process_allgather(eval_fn(graphdef, state, images), tiled=True)
        idx = multihost_utils.process_allgather(batch["index"], tiled=True)
        mask = multihost_utils.process_allgather(batch["mask"], tiled=True)
        chunks.append(np.asarray(out)[mask])
        indices.append(idx[mask])
    feats = np.concatenate(chunks)[np.argsort(np.concatenate(indices), kind="stable")]
    if config.eval.normalize_features:
        feats = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    return feats


def evaluate_state(eval_fn, graphdef, state, data: Data, config, batch_sharding) -> dict:
    """Rank-1/5/10, mAP and mINP (fractions) of the current state on query vs gallery."""
    return score_features(*query_gallery_features(eval_fn, graphdef, state, data, config,
                                                  batch_sharding), data, config)


def query_gallery_features(eval_fn, graphdef, state, data: Data, config,
                           batch_sharding) -> tuple[np.ndarray, np.ndarray]:
    """``extract_features`` of the query and of the gallery split."""
    return tuple(extract_features(eval_fn, graphdef, state, data.sources[split], config,
                                  batch_sharding) for split in ("query", "gallery"))


def distance_matrix(q: np.ndarray, g: np.ndarray, config,
                    rerank: bool | None = None) -> np.ndarray:
    """Query x gallery distances with ``config.eval``'s metric, or re-ranked (Euclidean, by
    the method's definition) if ``config.eval.rerank`` or ``rerank``."""
    e = config.eval
    if e.rerank if rerank is None else rerank:
        return re_ranking_features(q, g, e.rerank_k1, e.rerank_k2, e.rerank_lambda)
    return np.asarray(compute_distance_matrix(q, g, e.metric))


def score_features(q: np.ndarray, g: np.ndarray, data: Data, config,
                   rerank: bool | None = None) -> dict:
    """Metrics of query features ``q`` against gallery features ``g`` (``config.eval``'s
    distance, re-ranked if ``config.eval.rerank`` or ``rerank``)."""
    dist = distance_matrix(q, g, config, rerank=rerank)
    (q_pids, q_cams), (g_pids, g_cams) = data.ids["query"], data.ids["gallery"]
    r = evaluate(dist, q_pids, g_pids, q_cams, g_cams, max_rank=config.eval.max_rank)
    cmc = r["cmc"]
    return {"rank1": float(cmc[0]), "rank5": float(cmc[min(4, len(cmc) - 1)]),
            "rank10": float(cmc[min(9, len(cmc) - 1)]), "mAP": r["mAP"], "mINP": r["mINP"]}


# ---------------------------------------------------------------------------------------------
# Logging


class MetricsLog:
    """Rows to ``workdir/metrics.jsonl`` and TensorBoard event files, echoed to stdout.

    Only process 0 writes. TensorBoard tags are ``train/<key>`` and ``eval/<key>``.
    """

    def __init__(self, workdir: Path, resume_step: int = 0):
        self.enabled = jax.process_index() == 0
        self.path = workdir / "metrics.jsonl"
        self.tensorboard = SummaryWriter(workdir / "tensorboard") if self.enabled else None
        if self.enabled and self.path.exists():
            self._truncate_after(resume_step)

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

    def write(self, kind: str, row: dict) -> None:
        if not self.enabled:
            return
        row = {k: round(float(v), 6) for k, v in row.items()}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        step = int(row["step"])
        self.tensorboard.scalars(step, {f"{kind}/{k}": v for k, v in row.items() if k != "step"})
        tqdm.write(f"[{kind}] " + " ".join(f"{k}={v:g}" for k, v in row.items()))

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


# ---------------------------------------------------------------------------------------------
# The loop


def check_finite(metrics: dict, step: int, checkpoint_dir: Path) -> dict:
    """``metrics`` on the host; raises FloatingPointError naming the step if the loss is not
    finite. Called before any log row or checkpoint: non-finite parameters give a non-finite
    loss at every later step, so this keeps bad states out of checkpoints."""
    metrics = jax.device_get(metrics)
    if not np.isfinite(metrics["loss"]):
        raise FloatingPointError(f"loss is {metrics['loss']} at step {step}; the last good "
                                 f"checkpoint is kept in {checkpoint_dir}")
    return metrics


def data_parallel_shardings() -> tuple[NamedSharding, NamedSharding]:
    """(batch sharded over every device of every process, replicated) on a 1-D ``data`` mesh.

    Auto axes: XLA propagates the batch sharding through the step, so BatchNorm statistics and
    triplet mining are computed over the global batch.
    """
    mesh = jax.make_mesh((jax.device_count(),), ("data",),
                         axis_types=(jax.sharding.AxisType.Auto,))
    return NamedSharding(mesh, P("data")), NamedSharding(mesh, P())



class WorkdirError(OSError):
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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict:
    """Train for ``config.optim.epochs`` epochs (resuming if the workdir has a checkpoint) and
    return the final evaluation. SIGTERM/SIGINT save the latest state and raise
    ``preemption.TrainingStopped``."""
    workdir = Path(workdir)
    prepare_workdir(workdir)
    data = load_data(config)
    spe = data.sampler.steps_per_epoch
    total_steps = config.optim.epochs * spe

    batch_sharding, replicated = data_parallel_shardings()
    if data.sampler.batch_size % jax.device_count():
        raise ValueError(f"batch P*K={data.sampler.batch_size} must divide over "
                         f"{jax.device_count()} devices; change input.p or input.k")

    graphdef, state, schedule = create_train_state(config, data.num_classes, spe)
    state = jax.device_put(state, replicated)

    ckpt = checkpoint.Checkpointer(workdir / "checkpoints")
    start_step, best_map = 0, -1.0
    if ckpt.latest_step() is not None:
        state, meta = ckpt.restore_latest(state)
        start_step, best_map = meta["step"], meta["best_mAP"]
        print(f"resumed from step {start_step} (best mAP so far {best_map:.4f})")

    step_fn = make_train_step(config, schedule)
    eval_fn = make_eval_fn(config)
    log = MetricsLog(workdir, start_step)
    base_rng = jax.random.key(config.seed)

    batches = train_dataset(data.sources["train"], data.sampler,
                            image_size=(config.input.height, config.input.width),
                            start_step=start_step, num_steps=total_steps,
                            process_index=jax.process_index(), process_count=jax.process_count(),
                            num_workers=config.input.num_workers)
    result = {}
    tic, seen = time.perf_counter(), 0
    step = start_step
    # One bar per epoch, on an interactive terminal of process 0 only (not in CI logs).
    show_bar = jax.process_index() == 0 and sys.stdout.isatty()
    bar = tqdm(total=spe, initial=step % spe, desc=f"epoch {step // spe + 1}",
               disable=not show_bar, leave=False)
    # Whatever ends the loop (the end, a signal, an error), the logs are complete on disk.
    with preemption.StopRequest() as stop, contextlib.closing(log), bar:
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
                elapsed = time.perf_counter() - tic
                log.write("train", {"step": step, "epoch": step / spe, **metrics,
                                    "images_per_s": seen / elapsed})
                tic, seen = time.perf_counter(), 0
            epoch = step // spe
            if epoch_end:
                bar.reset()
                bar.set_description(f"epoch {epoch + 1}")
            if epoch_end and (epoch % config.eval.every_epochs == 0 or step == total_steps):
                result = evaluate_state(eval_fn, graphdef, state, data, config, batch_sharding)
                log.write("eval", {"step": step, "epoch": epoch, **result})
                if result["mAP"] > best_map:
                    best_map = result["mAP"]
                    ckpt.save_best(step, state, result)
            if epoch_end and (epoch % config.checkpoint_every_epochs == 0 or step == total_steps):
                ckpt.save_latest(step, state, {"step": step, "best_mAP": best_map})
            if stop.requested(at_sync_point=sync_point):
                check_finite(metrics, step, ckpt.directory)
                if ckpt.latest_step() != step:
                    ckpt.save_latest(step, state, {"step": step, "best_mAP": best_map})
                ckpt.wait()
                raise preemption.TrainingStopped(stop.signum, step, ckpt.directory)
    ckpt.wait()

    if not result:  # resumed at the end: nothing left to train, report the final state
        result = evaluate_state(eval_fn, graphdef, state, data, config, batch_sharding)
    return result


FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command line's flags; defined by the entry point only, so importing this module (as
    dualattn.evaluate does) leaves the global flag registry alone."""
    config_flags.DEFINE_config_file("config", None, "Training configuration file.",
                                    lock_config=True)
    flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")


def check_command_line(argv: list[str]) -> None:
    """What every entry point (train, evaluate, embed) first checks and sets."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.config is None or FLAGS.workdir is None:
        raise app.UsageError("both --config and --workdir are required")
    logging.set_verbosity(logging.WARNING)  # orbax and grain log every save at INFO
    xla_flags.prefer_cpu_flags()


def main(argv):
    check_command_line(argv)
    initialize_distributed()
    quiet_background_tracebacks()
    try:
        result = train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except preemption.TrainingStopped as e:
        print(e)
        sys.exit(128 + e.signum)
    except checkpoint.CheckpointWriteError as e:
        # orbax's failed background writers keep printing tracebacks from their threads, even
        # while the interpreter shuts down. Everything of ours is closed and flushed: silence
        # stderr, write the one line that matters last, and leave at once. It starts a line of
        # its own: a thread may have been cut off mid-line (seen once in CI).
        sys.stdout.flush()
        sys.stderr.flush()
        message = os.dup(2)
        os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
        os.write(message, f"\nerror: {e}\n".encode())
        os._exit(1)
    except USER_ERRORS as e:
        sys.exit(f"error: {e}")
    print("final: " + "  ".join(f"{k} {100 * v:.2f}%" for k, v in result.items()))


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


# Errors a user can cause or fix (bad data, weights, workdir, disk, divergence): one line each.
USER_ERRORS = (DatasetLayoutError, PretrainedWeightsError, checkpoint.CheckpointMismatchError,
               checkpoint.CheckpointWriteError, WorkdirError, FloatingPointError)


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

    logging_std.getLogger("absl").addFilter(FirstLineOnly())


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, ending every bad flag in one clear line rather than a traceback."""
    try:
        return FLAGS(argv)
    except flags.Error as e:  # wrong type or malformed value
        raise SystemExit(f"FATAL flags parsing error: {e}") from None
    except AttributeError as e:  # raised by ConfigDict for an unknown --config.* key
        overrides = [a.split("=")[0] for a in argv if a.startswith("--config.")]
        key = str(e).strip("'\"")
        raise SystemExit(f"FATAL unknown config key '{key}' in {' '.join(overrides)}; every key and "
                         "its default is listed in configs/common.py") from None


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=parse_flags)
