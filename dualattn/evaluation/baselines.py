"""What a trained model's figures are measured against: the untrained network (measured by
the trainer in the same run) and hand-crafted colour features, the classic ReID baseline.

The colour baseline is six horizontal stripes of HSV histograms (8 hue x 4 saturation x 4
value bins each) over the centre half of the crop's width (mostly the person, little
background), compared by Hellinger distance (Euclidean between square roots of the
normalised histograms), on crops at 128x64: it keeps where on the body a colour is, and needs
no training. It is the strongest of the colour baselines ``benchmarks.bench_color_histogram``
compares (BENCHMARKS.md); a network that does not beat it by a wide margin has not learned
identities.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from data_pipeline.datasets import read_columns
from data_pipeline.input_pipeline import decode_resize
from dualattn.evaluation.evaluator import ReIDEvaluator


def stripe_hsv_histogram(img: np.ndarray, stripes: int = 6) -> np.ndarray:
    """Six-stripe HSV histogram of a uint8 RGB crop (``stripes`` x 128 bins)."""
    hsv = np.asarray(Image.fromarray(img).convert("HSV"))
    idx = (hsv[..., 0].astype(np.int64) // 32 * 4 + hsv[..., 1] // 64) * 4 + hsv[..., 2] // 64
    parts = np.array_split(idx, stripes, axis=0)
    return np.concatenate([np.bincount(p.ravel(), minlength=128) for p in parts]).astype(float)


def person_region(img: np.ndarray) -> np.ndarray:
    """The centre half of a crop's width, where the person stands."""
    w = img.shape[1]
    return np.ascontiguousarray(img[:, w // 4:w - w // 4])


def hellinger_features(hists: np.ndarray) -> np.ndarray:
    """Histograms as features whose Euclidean distance is the Hellinger distance."""
    return np.sqrt(hists / hists.sum(axis=1, keepdims=True))


def colour_histogram_features(source) -> np.ndarray:
    """Hellinger features of the six-stripe HSV histograms of every crop's person region."""
    (jpegs,) = read_columns(source, "image")
    return hellinger_features(np.stack(
        [stripe_hsv_histogram(person_region(decode_resize(j, 128, 64))) for j in jpegs]))


def measure_baselines(evaluator: ReIDEvaluator, untrained) -> dict:
    """The scores of ``untrained`` (the network as training starts it) and of colour
    histograms on the evaluator's test split: ``{"untrained": {rates, "cmc"},
    "colour_histograms": {"mAP", "rank1"}}``, what ``RunDir.save_baselines`` keeps."""
    scores = evaluator(untrained)
    sources = evaluator.data.sources
    colour = evaluator.score(tuple(colour_histogram_features(sources[split])
                                   for split in ("query", "gallery")),
                             rerank=False, metric="euclidean")
    return {"untrained": {**scores.rates(), "cmc": scores.cmc.tolist()},
            "colour_histograms": {"mAP": colour.mAP, "rank1": colour.rank(1)}}


def describe_baselines(baselines: dict) -> str:
    """The line printed before training."""
    untrained, colour = baselines["untrained"], baselines["colour_histograms"]
    return (f"before training: mAP {100 * untrained['mAP']:.2f} % (rank-1 "
            f"{100 * untrained['rank1']:.2f} %) for the untrained network, "
            f"{100 * colour['mAP']:.2f} % ({100 * colour['rank1']:.2f} %) for colour "
            "histograms")


def baselines_line(mAP: float, baselines: dict) -> str:  # noqa: N803
    """The final mAP against the baselines, in one line a newcomer can read."""
    untrained, colour = baselines["untrained"]["mAP"], baselines["colour_histograms"]["mAP"]
    return (f"baselines: mAP {100 * mAP:.1f} % after training, against "
            f"{100 * untrained:.1f} % for the same network untrained and {100 * colour:.1f} % "
            f"for colour histograms (six-stripe HSV, person region) on the same test split: "
            f"{100 * (mAP - max(untrained, colour)):+.1f} points from learning")
