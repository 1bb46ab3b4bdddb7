"""Evaluate a trained run: ``python -m dualattn.evaluate --workdir W [--config C]``.

Loads the final model of the run in ``--workdir`` (its latest checkpoint), or
``--checkpoint=best``, the checkpoint whose test mAP was highest during training (chosen on the
test set, so labelled as such), or ``--checkpoint=untrained`` for the network as training
starts it (a baseline); extracts query and gallery features and prints Rank-1/5/10, mAP and
mINP as a table. The config is the one the run saved (``W/config.json``) unless ``--config``
is given; ``--config.KEY=VALUE`` overrides apply on top of either. Test-time options come from
the config (``--config.eval.flip_test``, ``--config.eval.rerank``, ``--config.eval.aqe``,
``--config.eval.metric``, ``--config.model.test_feature``); ``--variants`` scores every
combination of feature (after or before the BNNeck), flip averaging, average query expansion
and re-ranking in one run, one row each.
"""

from __future__ import annotations

from pathlib import Path

import jax
from absl import flags

from dualattn import cli
from dualattn.config_check import check_config
from dualattn.evaluation.evaluator import ReIDEvaluator
from dualattn.evaluation.figures import attention_image, ranked_lists
from dualattn.evaluation.report import write_run_report
from dualattn.evaluation.scores import format_table
from dualattn.run.data import load_data
from dualattn.run.model import load_model, untrained_model
from dualattn.run.workdir import RunDir, atomic_output, check_output_folder
from dualattn.training.losses import TERMS

FLAGS = flags.FLAGS

# How each checkpoint is named in printed tables.
LABELS = {"latest": "final", "best": "best (test-selected)", "untrained": "untrained"}


def define_flags() -> None:
    """Defined by the entry point only, so that importing this module defines no flags."""
    cli.define_config_flag()
    cli.define_workdir_flag()
    flags.DEFINE_enum("checkpoint", "latest", ["latest", "best", "untrained"],
                      "Which state to score: the final (latest) model; the checkpoint with the "
                      "best test mAP (model selection on the test set: label it so when you "
                      "report it); or the network as training starts it.")
    flags.DEFINE_bool("variants", False, "Score feature (after/before BNNeck) x flip x "
                      "average query expansion x re-ranking, one row each.")
    flags.DEFINE_integer("visualize", 0, "Write ranked_lists.png: this many queries with their "
                         "top-10 gallery images (green: same identity, red: not).")
    flags.DEFINE_integer("attention", 0, "Write attention.png: self-attention heatmaps over "
                         "this many query images.")
    flags.DEFINE_bool("report", False, "Write report_<checkpoint>.html: training curves, "
                      "scores, CMC, ranked lists and attention maps in one page.")
    flags.DEFINE_string("figures_dir", None, "Where the figures go (default: the workdir).")


def main(argv):
    cli.require("config", "workdir")
    config, which, run = FLAGS.config, FLAGS.checkpoint, RunDir(FLAGS.workdir)
    check_config(config, jax.device_count())
    figures = Path(FLAGS.figures_dir or run.path)
    if FLAGS.report or FLAGS.visualize or FLAGS.attention:  # checked before any work
        check_output_folder(figures, "--figures_dir" if FLAGS.figures_dir else "--workdir")
    # The checkpoint is found before the dataset is prepared: a workdir without one fails
    # at once.
    model = None if which == "untrained" else load_model(config, run.path, which)
    data = load_data(config)
    model = model or untrained_model(config, data.num_classes)
    evaluator, label = ReIDEvaluator(config, data), LABELS[which]
    scores = None
    if not FLAGS.variants or FLAGS.report or FLAGS.visualize:
        scores = evaluator(model)
    rows = [(label, model.step, scores)]
    if FLAGS.variants:
        rows = [(f"{label}: {name}", model.step, s) for name, s in evaluator.variants(model)]
    print(format_table(rows))
    if FLAGS.report:
        out = write_run_report(config, run, figures / run.report(which).name, data, label,
                               model.step, scores, model, loss_terms=tuple(TERMS))
        print(f"wrote {out}")
    if FLAGS.visualize:
        out = save_png(ranked_lists(config, data, scores, FLAGS.visualize),
                       figures / "ranked_lists.png")
        print("wrote", out)
    if FLAGS.attention:
        fig, gate = attention_image(config, model, data, FLAGS.attention)
        out = save_png(fig, figures / "attention.png")
        print(f"wrote {out} (attention gate alpha = {gate:.4f}: the weight of the module's "
              "output in alpha * o + x)")


def save_png(image, out: Path) -> Path:
    with atomic_output(out) as tmp:
        image.save(tmp, format="PNG")
    return out


def command() -> None:
    """The ``dualattn-evaluate`` console script: ``python -m dualattn.evaluate``."""
    define_flags()
    cli.run(main)


if __name__ == "__main__":
    command()
