"""Evaluate a trained run: ``python -m dualattn.evaluate --workdir W [--config C]``.

Loads the final model of the run in ``--workdir`` (its latest checkpoint), or
``--checkpoint=best``, the checkpoint whose test mAP was highest during training (chosen on the
test set, so labelled as such), or ``--checkpoint=untrained`` for the network as training
starts it (a baseline); extracts query and gallery features and prints Rank-1/5/10, mAP and
mINP as a table. The config is the one the run saved (``W/config.json``) unless ``--config``
is given; ``--config.KEY=VALUE`` overrides apply on top of either. Test-time options come from
the config (``--config.eval.flip_test``, ``--config.eval.rerank``, ``--config.eval.metric``,
``--config.model.test_feature``); ``--variants`` scores every combination of feature (after or
before the BNNeck), flip averaging and re-ranking in one run, one row each.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
from absl import flags

from dualattn import cli
from dualattn.config_check import check_config, check_test_split
from dualattn.data import Data, load_data
from dualattn.evaluation import (RATES, coverage, make_eval_fn, query_gallery_features,
                                 score_features)
from dualattn.mesh import data_parallel_shardings
from dualattn.report import RunFigures
from dualattn.state import load_model, untrained_model
from dualattn.visualize import attention_image, ranked_lists


class Run(NamedTuple):
    """A run's model loaded for testing, with its dataset."""
    step: int
    graphdef: Any
    state: Any
    data: Data
    batch_sharding: Any


def load_run(config, workdir: str | Path, which: str = "latest") -> Run:
    """The ``which`` checkpoint's model ("best", "latest", or "untrained": the network as
    training starts it) and the config's dataset. The checkpoint is found before the
    dataset is prepared, so a workdir without one fails at once."""
    check_config(config, jax.device_count())
    model = None if which == "untrained" else load_model(config, workdir, which)
    data = load_data(config)
    check_test_split(data.ids, config.dataset.root)
    if model is None:
        model = untrained_model(config, data.num_classes)
    batch_sharding, _ = data_parallel_shardings()
    return Run(*model, data, batch_sharding)


def run_features(config, run: Run, feature: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Query and gallery test features with the config's options (``feature`` overrides
    ``model.test_feature``)."""
    return query_gallery_features(make_eval_fn(config, feature), run.graphdef, run.state,
                                  run.data, config, run.batch_sharding)


def evaluate_run(config, workdir: str | Path, which: str = "latest") -> tuple[int, dict]:
    """(training step of the scored state, metrics as fractions) with the config's options."""
    run = load_run(config, workdir, which)
    return run.step, score_features(*run_features(config, run), run.data, config)


def evaluate_variants(config, run: Run) -> list[tuple[str, dict]]:
    """``[(name, metrics), ...]`` over feature x flip x re-ranking; features are extracted
    once per (feature, flip) and scored with and without re-ranking."""
    config = config.copy_and_resolve_references()  # the caller's config stays as it was
    rows = []
    for feature, flip in itertools.product(("after", "before"), (False, True)):
        config.eval.flip_test = flip
        q, g = run_features(config, run, feature)
        for rerank in (False, True):
            name = f"{feature}{' +flip' if flip else ''}{' +rerank' if rerank else ''}"
            rows.append((name, score_features(q, g, run.data, config, rerank=rerank)))
    return rows


def ranked_list_png(config, run: Run, n: int, out: Path, top: int = 10,
                    features: tuple[np.ndarray, np.ndarray] | None = None) -> Path:
    """``dualattn.visualize.ranked_lists`` of ``n`` queries, saved to ``out``.
    ``features``: the run's (query, gallery) features if at hand."""
    q, g = run_features(config, run) if features is None else features
    ranked_lists(config, run.data, q, g, n, top).save(out)
    return out


def attention_png(config, run: Run, n: int, out: Path) -> tuple[Path, float]:
    """``dualattn.visualize.attention_image`` of ``n`` query images, saved to ``out``; returns
    the path and the attention gate's value."""
    fig, gate = attention_image(config, run.graphdef, run.state, run.data, n)
    fig.save(out)
    return out, gate


def format_table(rows: list[tuple[str, int, dict]]) -> str:
    """The rows' rates side by side, and how many queries they cover (the same test split for
    every row)."""
    keys = RATES
    width = max(12, *(len(name) + 2 for name, _, _ in rows))
    head = f"{'checkpoint':<{width}}{'step':>8}" + "".join(f"{k:>9}" for k in keys)
    lines = [head, "-" * len(head)]
    for name, step, m in rows:
        lines.append(f"{name:<{width}}{step:>8}" + "".join(f"{100 * m[k]:>8.2f}%" for k in keys))
    lines.append(coverage(rows[0][2]))
    return "\n".join(lines)


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
                      "re-ranking, one row each.")
    flags.DEFINE_integer("visualize", 0, "Write ranked_lists.png: this many queries with their "
                         "top-10 gallery images (green: same identity, red: not).")
    flags.DEFINE_integer("attention", 0, "Write attention.png: self-attention heatmaps over "
                         "this many query images.")
    flags.DEFINE_bool("report", False, "Write report_<checkpoint>.html: training curves, "
                      "scores, CMC, ranked lists and attention maps in one page.")
    flags.DEFINE_string("figures_dir", None, "Where the figures go (default: the workdir).")


def main(argv):
    cli.require("config", "workdir")
    config, which = FLAGS.config, FLAGS.checkpoint
    run, features = load_run(config, FLAGS.workdir, which), None
    label = LABELS[which]
    if FLAGS.variants:
        rows = [(f"{label}: {name}", run.step, m) for name, m in evaluate_variants(config, run)]
    else:
        features = run_features(config, run)
        rows = [(label, run.step, score_features(*features, run.data, config))]
    print(format_table(rows))
    figures = Path(FLAGS.figures_dir or FLAGS.workdir)
    if FLAGS.report:
        features = features or run_features(config, run)
        result = rows[0][2] if not FLAGS.variants else score_features(*features, run.data,
                                                                       config)
        path = RunFigures(config, FLAGS.workdir, label, run.step, result, features, run.data,
                          run.graphdef, run.state).write(figures / f"report_{which}.html")
        print(f"wrote {path}")
    if FLAGS.visualize:
        print("wrote", ranked_list_png(config, run, FLAGS.visualize,
                                       figures / "ranked_lists.png", features=features))
    if FLAGS.attention:
        path, gate = attention_png(config, run, FLAGS.attention, figures / "attention.png")
        print(f"wrote {path} (attention gate alpha = {gate:.4f}: the weight of the module's "
              "output in alpha * o + x)")


def command() -> None:
    """The ``dualattn-evaluate`` console script: ``python -m dualattn.evaluate``."""
    define_flags()
    cli.run(main)


if __name__ == "__main__":
    command()
