"""Train and evaluate the ReID network: ``python -m dualattn.train --config C --workdir W``.

The workdir receives the resolved config, the logs (``metrics.jsonl`` and TensorBoard), the
checkpoints (latest and best) and, at the end, ``report.html`` (``dualattn.run.workdir``
names them). Started again on the same workdir, training resumes exactly where the latest
checkpoint left it. The loop is ``dualattn.training.loop``.
"""

from __future__ import annotations

import sys

import jax

from dualattn import cli
from dualattn.config_check import check_config
from dualattn.evaluation.baselines import baselines_line
from dualattn.run.workdir import RunDir
from dualattn.training.log import checkpoints_line
from dualattn.training.loop import train_and_evaluate
from dualattn.training.preemption import TrainingStopped

FLAGS = cli.FLAGS


def main(argv):
    cli.require("config", "workdir")
    config, run = FLAGS.config, RunDir(FLAGS.workdir)
    check_config(config, jax.device_count())
    try:
        scores = train_and_evaluate(config, run.path)
    except TrainingStopped as e:
        print(e)
        sys.exit(128 + e.signum)
    print("final: " + scores.describe())
    if jax.process_index() != 0:
        return
    baselines = run.load_baselines()
    if baselines:
        print(baselines_line(scores.mAP, baselines))
    print(checkpoints_line(run))
    if config.eval.report and jax.process_count() == 1:
        print(f"report: {run.report()} (training curves, scores, CMC, ranked lists, attention "
              "maps; open it in a browser)")
    elif config.eval.report:
        print(f"report: run python -m dualattn.evaluate --workdir {FLAGS.workdir} --report in "
              "one process")


def command() -> None:
    """The ``dualattn-train`` console script: ``python -m dualattn.train``."""
    cli.define_config_flag("Training configuration file.")
    cli.define_workdir_flag("Directory for checkpoints and metrics.")
    cli.run(main)


if __name__ == "__main__":
    command()
