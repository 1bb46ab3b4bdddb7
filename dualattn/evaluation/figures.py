"""Figures for looking at a model: ranked lists (the paper's Fig. 3) and attention heatmaps.

Drawn with Pillow alone (no plotting library). Both are grids of fixed-size cells, so their
pixel size follows from the counts: ``CELL_PAD`` between cells, ``FRAME`` pixels of colour
around each gallery image.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx
from PIL import Image, ImageDraw, ImageFont

from data_pipeline.input_pipeline import decode_resize
from dualattn.evaluation.metrics import kept_ranking
from dualattn.evaluation.scores import Scores
from dualattn.models.preprocess import normalize
from dualattn.run.data import Data

FRAME = 3  # border width around each retrieved image
CELL_PAD = 4  # space between cells
QUERY_GAP = 12  # extra space between the query and its ranked list
GREEN, RED, GREY, WHITE = (40, 170, 60), (210, 40, 40), (90, 90, 90), (255, 255, 255)
TEXT = (20, 20, 20)
LABEL_H = 12  # a line of Pillow's default font under each image, when captioned
HEADER_H = 14  # a line of text above the attention figure
SCALE_W = 14  # the attention figure's colour scale
ATTENTION_H = 256  # attention figures show images this high, whatever the input size


def ranked_list_figure(queries: list[np.ndarray], ranked: list[list[np.ndarray]],
                       correct: list[list[bool]], captions: list[list[str]] | None = None,
                       query_captions: list[str] | None = None) -> Image.Image:
    """One row per query: the query (grey frame), then its ranked gallery images, framed green
    for the same identity and red otherwise. All images must share one (h, w, 3) uint8 size.
    With ``captions`` (per gallery image) and ``query_captions``, a line of text goes under
    each image (``LABEL_H`` pixels)."""
    h, w = queries[0].shape[:2]
    cols = max(len(r) for r in ranked)
    lines = max((c.count("\n") + 1 for row in (captions or []) + [query_captions or []]
                 for c in row), default=0)
    label_h = LABEL_H * lines if captions is not None else 0
    cell_w, cell_h = w + 2 * FRAME + CELL_PAD, h + 2 * FRAME + CELL_PAD + label_h
    fig = Image.new("RGB", (cell_w * (cols + 1) + QUERY_GAP, cell_h * len(queries)), WHITE)
    draw = ImageDraw.Draw(fig)
    font = ImageFont.load_default()

    def put(image, x, y, colour, caption=None):
        draw.rectangle([x, y, x + w + 2 * FRAME - 1, y + h + 2 * FRAME - 1], fill=colour)
        fig.paste(Image.fromarray(image), (x + FRAME, y + FRAME))
        if caption:
            draw.text((x + 1, y + h + 2 * FRAME), caption, fill=TEXT, font=font)

    for row, (query, images, hits) in enumerate(zip(queries, ranked, correct, strict=True)):
        y = row * cell_h
        put(query, 0, y, GREY, query_captions[row] if query_captions else None)
        for col, (image, hit) in enumerate(zip(images, hits, strict=True)):
            put(image, QUERY_GAP + (col + 1) * cell_w, y, GREEN if hit else RED,
                captions[row][col] if captions is not None else None)
    return fig


def colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> uint8 RGB on a blue-cyan-yellow-red scale (jet-like)."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    anchors = np.array([0.0, 0.35, 0.65, 1.0])
    colours = np.array([[0, 0, 160], [0, 200, 255], [255, 230, 0], [220, 0, 0]], np.float64)
    rgb = np.stack([np.interp(v[..., 0], anchors, colours[:, c]) for c in range(3)], axis=-1)
    return rgb.astype(np.uint8)


def attention_figure(images: np.ndarray, maps: np.ndarray, alpha: float = 0.5,
                     gate: float | None = None) -> Image.Image:
    """Per image: the image and the heatmap of ``maps`` (B, h, w) over it, side by side, a
    colour scale at the right and a header line (with the attention gate's value ``gate``,
    the weight of the module's output in ``alpha * o + x``).

    Each map is scaled to [0, 1] on its own (where the module looks *within* the image, from
    least to most) and resized bilinearly to the image."""
    b, h, w = images.shape[:3]
    cell_w, cell_h = 2 * w + 2 * CELL_PAD, h + CELL_PAD
    scale_x = cell_w * b
    fig = Image.new("RGB", (scale_x + SCALE_W + 40, HEADER_H + cell_h), WHITE)
    draw = ImageDraw.Draw(fig)
    font = ImageFont.load_default()
    header = "attention each position receives, within each image"
    if gate is not None:
        header += f"; gate alpha = {gate:.4f}"
    draw.text((0, 1), header, fill=TEXT, font=font)
    for i in range(b):
        m = maps[i].astype(np.float64)
        m = (m - m.min()) / max(m.max() - m.min(), 1e-12)
        big = np.asarray(Image.fromarray((m * 255).astype(np.uint8)).resize(
            (w, h), Image.Resampling.BILINEAR), np.float64) / 255
        overlay = (1 - alpha) * images[i] + alpha * colormap(big)
        x = i * cell_w
        fig.paste(Image.fromarray(images[i]), (x, HEADER_H))
        fig.paste(Image.fromarray(overlay.astype(np.uint8)), (x + w + CELL_PAD, HEADER_H))
    scale = colormap(np.repeat(np.linspace(1.0, 0.0, h)[:, None], SCALE_W, axis=1))
    fig.paste(Image.fromarray(scale), (scale_x, HEADER_H))
    draw.text((scale_x + SCALE_W + 3, HEADER_H), "most", fill=TEXT, font=font)
    draw.text((scale_x + SCALE_W + 3, HEADER_H + h - 11), "least", fill=TEXT, font=font)
    return fig


def attention_image(config, model, data: Data, n: int) -> tuple[Image.Image, float]:
    """``attention_figure`` of ``n`` query images spread over the split, 256 pixels high, and
    the gate's value: the attention each position of the feature map receives (the mean
    over query positions of softmax(QK^T / sqrt(d))). ``model``: its ``graphdef`` and
    ``state``."""
    graphdef, state = model.graphdef, model.state
    model = nnx.merge(graphdef, state)
    if model.attention is None:
        raise ValueError("this model has no self-attention module (model.use_sa=False)")
    size = (config.input.height, config.input.width)
    images = np.stack([decode_resize(data.sources["query"][int(i)]["image"], *size)
                       for i in spread(n, len(data.sources["query"]))])

    @jax.jit
    def received(state, images):
        model = nnx.merge(graphdef, state)
        fmap = model.backbone(normalize(images), train=False)
        attn = model.attention.attention_map(fmap, train=False)
        return attn.mean(axis=1).reshape(fmap.shape[:3])

    maps = np.asarray(received(state, images))
    h, w = ATTENTION_H, max(1, round(size[1] * ATTENTION_H / size[0]))
    big = np.stack([np.asarray(Image.fromarray(im).resize((w, h), Image.Resampling.BILINEAR))
                    for im in images])
    gate = float(np.asarray(model.attention.alpha[...], np.float32))
    return attention_figure(big, maps, gate=gate), gate


def thumbnail_size(config) -> tuple[int, int]:
    """Input size, shrunk to 128 pixels high for the figures when larger."""
    h, w = config.input.height, config.input.width
    return (h, w) if h <= 128 else (128, max(1, round(w * 128 / h)))


def spread(n: int, total: int) -> np.ndarray:
    """``n`` indices spread evenly over ``range(total)``."""
    return np.unique(np.linspace(0, total - 1, min(n, total)).round().astype(int))


def ranked_lists(config, data: Data, scores: Scores, n: int, top: int = 10,
                 which=None) -> Image.Image:
    """``ranked_list_figure`` of ``n`` queries spread over the query split (or the query
    indices ``which``), with their top-``top`` gallery images in the protocol's ranking of
    ``scores.distances`` (``metrics.kept_ranking``: the query identity's same-camera images
    are skipped). Each gallery image is captioned ``rank:distance`` over its identity and
    camera (``p<pid> c<camera>``, cameras counted from 1 as the datasets name them); each
    query with its identity and camera over its AP, and the rank of its first true match when
    that is below ``top``."""
    (q_pids, q_cams), (g_pids, g_cams) = data.ids["query"], data.ids["gallery"]
    size = thumbnail_size(config)
    dist = scores.distances
    queries, ranked, correct, captions, query_captions = [], [], [], [], []
    for i in spread(n, len(q_pids)) if which is None else which:
        order = kept_ranking(dist[i], q_pids[i], q_cams[i], g_pids, g_cams)[:top]
        queries.append(decode_resize(data.sources["query"][int(i)]["image"], *size))
        ranked.append([decode_resize(data.sources["gallery"][int(j)]["image"], *size)
                       for j in order])
        correct.append(list(g_pids[order] == q_pids[i]))
        captions.append([f"{rank}:{dist[i, j]:.2f}\np{g_pids[j]} c{g_cams[j] + 1}"
                         for rank, j in enumerate(order, 1)])
        score = "AP -"
        if scores.valid[i]:
            first = int(scores.first_rank[i]) + 1
            score = f"AP {100 * scores.ap[i]:.0f}%" + (f" #{first}" if first > top else "")
        query_captions.append(f"p{q_pids[i]} c{q_cams[i] + 1}\n{score}")
    return ranked_list_figure(queries, ranked, correct, captions, query_captions)
