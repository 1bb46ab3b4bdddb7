"""Features of your own crops from a trained run, and nearest-neighbour search over them.

    python -m dualattn.embed --workdir W --images DIR --out feats.npz
    python -m dualattn.embed --workdir W --query IMG --gallery DIR [--top 10]

The first writes the test feature of every image under ``DIR`` (recursively; .jpg, .jpeg,
.png, .bmp; sorted by path) to an ``.npz`` with ``features`` (float32, N x D) and ``paths``
(relative to ``DIR``, same order). The second prints the ``--top`` gallery images closest to
the query. Features come from ``dualattn.FeatureExtractor``: the preprocessing, test feature,
flip option and normalisation of evaluation, batched over this process's devices, using the
run's final checkpoint unless ``--checkpoint=best``, and the config the run saved unless
``--config``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from absl import app, flags

from data_pipeline.datasets.layouts import listing, unreadable_images
from data_pipeline.input_pipeline import EIGHT_BIT_MODES
from dualattn import cli
from dualattn.errors import UserError
from dualattn.evaluation.metrics import compute_distance_matrix
from dualattn.run.workdir import atomic_output, check_output_file
from dualattn.serving.extractor import FeatureExtractor

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


class EmbedError(UserError, ValueError):
    """The images or the run cannot be used; the message says which and why."""


def list_images(folder: Path) -> list[Path]:
    """Every image under ``folder``, sorted; each checked to decode, all failures reported."""
    if not folder.is_dir():
        raise EmbedError(f"{folder} is not a folder of images")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise EmbedError(f"no {'/'.join(IMAGE_SUFFIXES)} images under {folder}")
    bad = unreadable_images(paths, modes=EIGHT_BIT_MODES)  # 8-bit modes convert to RGB as is
    if bad:
        raise EmbedError(f"{len(bad)} image(s) cannot be decoded; remove or replace them:"
                         + listing(bad))
    return paths


def nearest(config, query: np.ndarray, gallery: np.ndarray, top: int) -> tuple[np.ndarray,
                                                                                np.ndarray]:
    """Indices and distances of the ``top`` gallery features closest to each query feature."""
    dist = np.asarray(compute_distance_matrix(query, gallery, config.eval.metric))
    order = np.argsort(dist, axis=1, kind="stable")[:, :top]
    return order, np.take_along_axis(dist, order, axis=1)


FLAGS = flags.FLAGS


def define_flags() -> None:
    cli.define_config_flag()
    cli.define_workdir_flag()
    flags.DEFINE_enum("checkpoint", "latest", ["latest", "best"], "Which checkpoint to use: "
                      "the final model, or the one with the best test mAP.")
    flags.DEFINE_string("images", None, "Folder of images to embed (with --out).")
    flags.DEFINE_string("out", None, "The .npz file to write (features, paths).")
    flags.DEFINE_string("query", None, "One query image (with --gallery).")
    flags.DEFINE_string("gallery", None, "Folder of gallery images to search.")
    flags.DEFINE_integer("top", 10, "How many gallery images to print.")


def main(argv):
    cli.require("config", "workdir")
    search = FLAGS.query is not None or FLAGS.gallery is not None
    files = FLAGS.images is not None or FLAGS.out is not None
    if search == files or (search and None in (FLAGS.query, FLAGS.gallery)) or (
            files and None in (FLAGS.images, FLAGS.out)):
        raise app.UsageError("give either --images DIR --out FILE, or --query IMG --gallery DIR")
    config = FLAGS.config
    if search:  # the inputs are checked before the model is loaded
        query = Path(FLAGS.query)
        if query.suffix.lower() not in IMAGE_SUFFIXES or not query.is_file():
            raise EmbedError(f"--query {query} is not an image file")
        gallery = list_images(Path(FLAGS.gallery))
        extract = FeatureExtractor(FLAGS.workdir, config=config, checkpoint=FLAGS.checkpoint)
        idx, dist = nearest(config, extract([query]), extract(gallery), FLAGS.top)
        print(f"the {len(idx[0])} gallery images closest to {query} "
              f"({config.eval.metric} distance):")
        for rank, (i, d) in enumerate(zip(idx[0], dist[0], strict=True), 1):
            print(f"{rank:>4}  {d:10.4f}  {gallery[i]}")
        return
    folder, out = Path(FLAGS.images), check_output_file(FLAGS.out, "--out")
    paths = list_images(folder)
    feats = FeatureExtractor(FLAGS.workdir, config=config, checkpoint=FLAGS.checkpoint)(paths)
    with atomic_output(out, suffix=".npz") as tmp:
        np.savez(tmp, features=feats,
                 paths=np.array([str(p.relative_to(folder)) for p in paths]))
    print(f"wrote {out}: {feats.shape[0]} features of dimension {feats.shape[1]}")


def command() -> None:
    """The ``dualattn-embed`` console script: ``python -m dualattn.embed``."""
    define_flags()
    cli.run(main)


if __name__ == "__main__":
    command()
