"""What a trained model's figures are measured against: the untrained network (measured by
the trainer in the same run) and hand-crafted colour features, the classic ReID baseline.

The colour baseline is six horizontal stripes of HSV histograms (8 hue x 4 saturation x 4
value bins each) over the centre half of the crop's width (mostly the person, little
background), compared by Hellinger distance (Euclidean between square roots of the
normalised histograms), on crops at 128x64: it keeps where on the body a colour is, and needs
no training. It is the strongest of the colour baselines ``benchmarks.bench_color_histogram``
compares; a network that does not beat it by a wide margin has not learned identities.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from data_pipeline.datasets import read_columns
from data_pipeline.input_pipeline import decode_resize
from dualattn.data import Data
from dualattn.metrics import compute_distance_matrix, evaluate

CONTEXT_FILE = "context.json"


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


def colour_histogram_scores(data: Data) -> dict:
    """mAP and rank-1 (fractions) of six-stripe HSV histograms of the person region on
    ``data``'s test split."""
    feats = []
    for split in ("query", "gallery"):
        (jpegs,) = read_columns(data.sources[split], "image")
        feats.append(hellinger_features(np.stack(
            [stripe_hsv_histogram(person_region(decode_resize(j, 128, 64))) for j in jpegs])))
    (q_pids, q_cams), (g_pids, g_cams) = data.ids["query"], data.ids["gallery"]
    r = evaluate(np.asarray(compute_distance_matrix(*feats)), q_pids, g_pids, q_cams, g_cams)
    return {"mAP": float(r["mAP"]), "rank1": float(r["cmc"][0])}


def save_context(workdir: Path, context: dict) -> None:
    path = workdir / CONTEXT_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(context, indent=2) + "\n")
    tmp.replace(path)


def load_context(workdir: Path) -> dict | None:
    path = workdir / CONTEXT_FILE
    return json.loads(path.read_text()) if path.exists() else None


def context_line(result: dict, context: dict) -> str:
    """The final result against the baselines, in one line a newcomer can read."""
    untrained, colour = context["untrained"]["mAP"], context["colour_histograms"]["mAP"]
    return (f"context: mAP {100 * result['mAP']:.1f} % after training, against "
            f"{100 * untrained:.1f} % for the same network untrained and {100 * colour:.1f} % "
            f"for colour histograms (six-stripe HSV, person region) on the same test split: "
            f"{100 * (result['mAP'] - max(untrained, colour)):+.1f} points from learning")
