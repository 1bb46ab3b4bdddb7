"""A run's results as one self-contained HTML page (PNG figures embedded): what a newcomer
opens after the demo, and what ``dualattn.evaluate --report`` writes for any checkpoint.

Panels: the training curves (loss and its two terms, learning rate), mAP and rank-1 at each
evaluation, the CMC curve of the scored model beside the untrained network's (when the run
measured it, ``eval.baselines``), the figures against their baselines, a few ranked lists and
the attention maps. Charts are drawn with Pillow, like the other figures: no plotting
library, no browser needed to check them (the tests decode every image).
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from dualattn.evaluation.baselines import baselines_line
from dualattn.evaluation.figures import TEXT, WHITE, attention_image, ranked_lists
from dualattn.evaluation.scores import Scores
from dualattn.run.data import Data
from dualattn.run.workdir import RunDir, atomic_write

CHART_SIZE = (520, 300)
MARGIN = (56, 24, 16, 36)  # left, top, right, bottom
PALETTE = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14))
AXIS = (90, 90, 90)


def _ticks(low: float, high: float, count: int = 5) -> np.ndarray:
    return np.linspace(low, high, count)


def line_chart(series: dict[str, tuple[np.ndarray, np.ndarray]], title: str, xlabel: str,
               ylim: tuple[float, float] | None = None, percent: bool = False) -> Image.Image:
    """Lines of ``series`` (name -> (x, y)) on shared axes, with a legend in the title row."""
    width, height = CHART_SIZE
    left, top, right, bottom = MARGIN
    fig = Image.new("RGB", CHART_SIZE, WHITE)
    draw = ImageDraw.Draw(fig)
    font = ImageFont.load_default()
    xs = np.concatenate([np.asarray(x, float) for x, _ in series.values()])
    ys = np.concatenate([np.asarray(y, float) for _, y in series.values()])
    x0, x1 = float(xs.min()), float(xs.max()) if xs.max() > xs.min() else float(xs.min()) + 1
    y0, y1 = ylim if ylim else (float(ys.min()), float(ys.max()))
    if y1 <= y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    pw, ph = width - left - right, height - top - bottom

    def px(x, y):
        return (left + (x - x0) / (x1 - x0) * pw, top + (1 - (y - y0) / (y1 - y0)) * ph)

    draw.rectangle([left, top, left + pw, top + ph], outline=AXIS)
    for v in _ticks(y0, y1):
        _, y = px(x0, v)
        draw.line([left - 4, y, left, y], fill=AXIS)
        label = f"{100 * v:.0f}%" if percent else f"{v:.3g}"
        draw.text((2, y - 6), label, fill=TEXT, font=font)
    for v in _ticks(x0, x1):
        x, _ = px(v, y0)
        draw.line([x, top + ph, x, top + ph + 4], fill=AXIS)
        draw.text((x - 12, top + ph + 6), f"{v:.4g}", fill=TEXT, font=font)
    draw.text((left + pw // 2 - 3 * len(xlabel), height - 14), xlabel, fill=TEXT, font=font)
    draw.text((left, 4), title, fill=TEXT, font=font)
    legend_x = left + 8 + 6 * len(title)
    for (name, (x, y)), colour in zip(series.items(), PALETTE, strict=False):
        points = [px(a, b) for a, b in zip(np.asarray(x, float), np.asarray(y, float), strict=True)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for a, b in points if len(points) < 30 else []:
            draw.ellipse([a - 2, b - 2, a + 2, b + 2], fill=colour)
        draw.line([legend_x, 10, legend_x + 14, 10], fill=colour, width=3)
        draw.text((legend_x + 18, 4), name, fill=TEXT, font=font)
        legend_x += 26 + 6 * len(name)
    return fig


def training_charts(rows: list[dict], loss_terms=()) -> list[tuple[str, Image.Image]]:
    """The curves of a run's ``metrics.jsonl`` rows: the loss and its ``loss_terms``, the
    learning rate, the evaluations."""
    train = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "mAP" in r]
    charts = []
    if train:
        steps = np.array([r["step"] for r in train])
        charts.append(("Training loss", line_chart(
            {k: (steps, np.array([r[k] for r in train]))
             for k in ("loss", *loss_terms) if k in train[0]}, "loss", "step")))
        charts.append(("Learning rate", line_chart(
            {"lr": (steps, np.array([r["lr"] for r in train]))}, "learning rate", "step")))
        if "alpha" in train[0]:
            charts.append(("Self-attention gate", line_chart(
                {"alpha": (steps, np.array([r["alpha"] for r in train]))},
                "gate alpha (weight of the attention's output in alpha * o + x)", "step")))
    if evals:
        steps = np.array([r["step"] for r in evals])
        charts.append(("Test scores at each evaluation", line_chart(
            {k: (steps, np.array([r[k] for r in evals])) for k in ("mAP", "rank1")},
            "test scores", "step", ylim=(0, 1), percent=True)))
    return charts


def cmc_chart(curves: dict[str, np.ndarray]) -> Image.Image:
    """CMC curves (name -> fraction matched within rank k, k = 1..)."""
    return line_chart({name: (np.arange(1, len(c) + 1), np.asarray(c)) for name, c in
                       curves.items()}, "CMC: a true match within the top k", "rank k",
                      ylim=(0, 1), percent=True)


def _png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def write_report(out: Path, title: str, summary: list[str],
                 panels: list[tuple[str, str, Image.Image | None]]) -> Path:
    """The page: ``summary`` lines, then each panel (heading, text, figure)."""
    parts = ["<!doctype html><html><head><meta charset='utf-8'>",
             f"<title>{html.escape(title)}</title><style>body{{font-family:sans-serif;"
             "max-width:1200px;margin:2em auto;color:#222}} img{{max-width:100%;"
             "border:1px solid #ddd}} .s{{font-family:monospace}}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    parts += [f"<p class='s'>{html.escape(line)}</p>" for line in summary]
    for heading, text, image in panels:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        if text:
            parts.append(f"<p>{html.escape(text)}</p>")
        if image is not None:
            parts.append(f"<img alt='{html.escape(heading)}' "
                         f"src='data:image/png;base64,{_png(image)}'>")
    parts.append("</body></html>")
    return atomic_write(out, "\n".join(parts) + "\n")


def write_run_report(config, run: RunDir, out: Path, data: Data, label: str, step: int,
                     scores: Scores, model, loss_terms=(), queries: int = 6) -> Path:
    """The report of one scored model (``model``: its ``graphdef`` and ``state``) of ``run``:
    the run's curves from its logs (the loss and its ``loss_terms``), ``scores`` with their
    CMC against the untrained network's (when the run measured its baselines), ranked lists
    and the attention maps. Every process of a multi-process run would have to join the
    attention maps' jitted pass, so only single-process runs call this."""
    baselines = run.load_baselines()
    summary = [f"{label} model (step {step}): {scores.describe()}"]
    curves = {f"{label} (step {step})": scores.cmc}
    if baselines:
        summary.append(baselines_line(scores.mAP, baselines))
        curves["untrained network"] = np.asarray(baselines["untrained"]["cmc"])
    panels = [(name, "", chart) for name, chart in training_charts(run.rows(), loss_terms)]
    panels.append(("CMC curve", "The fraction of queries whose first true match (another "
                   "camera's image of the same identity) is within the top k.",
                   cmc_chart(curves)))
    panels.append(("Ranked lists", "Queries (grey) and their ten nearest gallery images: "
                   "green the same identity, red another; each captioned rank:distance, "
                   "each query with its average precision over the whole gallery.",
                   ranked_lists(config, data, scores, queries)))
    if config.model.use_sa:
        attention, gate = attention_image(config, model, data, 4)
        panels.append(("Self-attention", "Where the spatial self-attention module looks: "
                       "the attention each feature-map position receives, scaled within "
                       f"each image. Its output is added with weight alpha = {gate:.4f}.",
                       attention))
    title = f"dualattn: {run.path.name}, {label} model"
    return write_report(out, title, summary, panels)
