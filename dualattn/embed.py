"""Features of your own crops from a trained run, and nearest-neighbour search over them.

    python -m dualattn.embed --workdir W --images DIR --out feats.npz
    python -m dualattn.embed --workdir W --query IMG --gallery DIR [--top 10]
    python -m dualattn.embed --workdir W --query IMG --gallery feats.npz [--search faiss]

The first writes the test feature of every image under ``DIR`` (recursively; .jpg, .jpeg,
.png, .bmp; sorted by path) to an ``.npz`` with ``features`` (float32, N x D) and ``paths``
(relative to ``DIR``, same order). The second prints the ``--top`` gallery images closest to
the query; the third searches a gallery embedded once by the first, of any size
(``dualattn.serving.search.top_k``: the gallery streams through the device, and the query x
gallery distances are never held whole). Features come from ``dualattn.FeatureExtractor``:
the preprocessing, test feature, flip option and normalisation of evaluation, batched over
this process's devices, using the run's final checkpoint unless ``--checkpoint=best``, and the
config the run saved unless ``--config``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from absl import app, flags

from data_pipeline.datasets.layouts import listing, unreadable_images
from data_pipeline.input_pipeline import EIGHT_BIT_MODES
from dualattn import cli
from dualattn.errors import UserError
from dualattn.run.workdir import atomic_output, check_output_file
from dualattn.serving.extractor import FeatureExtractor
from dualattn.serving.search import BACKENDS, top_k

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


def load_features(path: Path) -> tuple[np.ndarray, list[str]]:
    """The ``features`` and ``paths`` of an ``.npz`` this command wrote with ``--out``."""
    try:
        with np.load(path) as saved:
            features, paths = saved["features"], [str(p) for p in saved["paths"]]
    except (OSError, ValueError, KeyError, EOFError) as e:
        raise EmbedError(f"--gallery {path} is not a features file written by 'dualattn.embed "
                         f"--images DIR --out FILE' ({e}); write it again") from None
    if features.ndim != 2 or len(paths) != len(features):
        raise EmbedError(f"--gallery {path}: {features.shape} features for {len(paths)} paths; "
                         "write it again with --images DIR --out FILE")
    return features, paths


FLAGS = flags.FLAGS


def define_flags() -> None:
    cli.define_config_flag()
    cli.define_workdir_flag()
    flags.DEFINE_enum("checkpoint", "latest", ["latest", "best"], "Which checkpoint to use: "
                      "the final model, or the one with the best test mAP.")
    flags.DEFINE_string("images", None, "Folder of images to embed (with --out).")
    flags.DEFINE_string("out", None, "The .npz file to write (features, paths).")
    flags.DEFINE_string("query", None, "One query image (with --gallery).")
    flags.DEFINE_string("gallery", None, "Folder of gallery images to search, or the .npz of "
                        "their features (--images DIR --out FILE): embedded once, searched "
                        "at any size.")
    flags.DEFINE_integer("top", 10, "How many gallery images to print.")
    flags.DEFINE_enum("search", "exact", list(BACKENDS), "exact: streamed through the device "
                      "(dualattn.serving.search); faiss: its exact flat index (the [search] "
                      "extra).")


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
        if Path(FLAGS.gallery).suffix == ".npz":
            features, gallery = load_features(Path(FLAGS.gallery))
        else:
            gallery, features = list_images(Path(FLAGS.gallery)), None
        extract = FeatureExtractor(FLAGS.workdir, config=config, checkpoint=FLAGS.checkpoint)
        if features is None:
            features = extract(gallery)
        elif features.shape[1] != extract.dim:
            raise EmbedError(f"--gallery {FLAGS.gallery} holds {features.shape[1]}-D features, "
                             f"this run's are {extract.dim}-D: embed the gallery with "
                             "this run")
        idx, dist = top_k(extract([query]), features, FLAGS.top, metric=config.eval.metric,
                          backend=FLAGS.search)
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
