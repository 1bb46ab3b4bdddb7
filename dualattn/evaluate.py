"""Evaluate a trained run: ``python -m dualattn.evaluate --config C --workdir W``.

Loads the best checkpoint (by mAP) of the run in ``--workdir``, or ``--checkpoint=latest``,
or ``--checkpoint=untrained`` for the random initialisation (a baseline), extracts query and
gallery features and prints Rank-1/5/10, mAP and mINP as a table.
"""

from __future__ import annotations

from pathlib import Path

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from dualattn import checkpoint, train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "The run's configuration file.", lock_config=True)
flags.DEFINE_string("workdir", None, "The run's directory (holding checkpoints/).")
flags.DEFINE_enum("checkpoint", "best", ["best", "latest", "untrained"], "Which state to score.")


def evaluate_run(config, workdir: str | Path, which: str = "best") -> tuple[int, dict]:
    """(training step of the scored state, metrics as fractions)."""
    data = train.load_data(config)
    batch_sharding, replicated = train.data_parallel_shardings()
    step = 0
    if which == "untrained":
        graphdef, state, _ = train.create_train_state(config, data.num_classes,
                                                       data.sampler.steps_per_epoch)
    else:
        ckpt = checkpoint.Checkpointer(Path(workdir) / "checkpoints")
        # The checkpoint's own classifier size: a model trained on another dataset (or
        # converted from PyTorch) evaluates here too; the classifier plays no part in it.
        num_classes = ckpt.stored_num_classes(which) or data.num_classes
        graphdef, state, _ = train.create_train_state(config, num_classes, 1,
                                                       load_pretrained=False)
        restore = ckpt.restore_best if which == "best" else ckpt.restore_latest
        state, meta = restore(state)
        step = meta["step"]
    state = jax.device_put(state, replicated)
    eval_fn = jax.jit(train.eval_step, static_argnums=0)
    return step, train.evaluate_state(eval_fn, graphdef, state, data, config, batch_sharding)


def format_table(rows: list[tuple[str, int, dict]]) -> str:
    keys = ("rank1", "rank5", "rank10", "mAP", "mINP")
    head = f"{'checkpoint':<12}{'step':>8}" + "".join(f"{k:>9}" for k in keys)
    lines = [head, "-" * len(head)]
    for name, step, m in rows:
        lines.append(f"{name:<12}{step:>8}" + "".join(f"{100 * m[k]:>8.2f}%" for k in keys))
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.config is None or FLAGS.workdir is None:
        raise app.UsageError("both --config and --workdir are required")
    logging.set_verbosity(logging.WARNING)
    step, metrics = evaluate_run(FLAGS.config, FLAGS.workdir, FLAGS.checkpoint)
    print(format_table([(FLAGS.checkpoint, step, metrics)]))


if __name__ == "__main__":
    app.run(main, flags_parser=train.parse_flags)
