"""A run's results as one self-contained HTML page (figures embedded as PNG): what a newcomer
opens after the demo, and what ``dualattn.evaluate --report`` writes for any checkpoint.

From the top: the scored model's line and its baselines; every evaluation in a table (the
best mAP in bold); the run (parameters, throughput, wall time, dataset statistics per split,
the config); the training curves (loss and its terms, the learning rate on a log axis, the
self-attention gate); the test scores at each evaluation with the best marked; the CMC curve
beside the untrained network's (when the run measured it, ``eval.baselines``); the ROC of
the query-gallery pairs with the TPR@FPR points, and the distances of positive and negative
pairs; ranked lists of the hardest queries and of typical ones; and the attention maps.

Charts are drawn with matplotlib (its object API, no pyplot state, no display needed); the
image grids with Pillow (``dualattn.evaluation.figures``).
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np
from flax import nnx
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter
from PIL import Image

from dualattn.evaluation.baselines import baselines_line
from dualattn.evaluation.figures import attention_image, ranked_lists
from dualattn.evaluation.scores import Scores
from dualattn.evaluation.verification import pair_masks
from dualattn.models.reid import count_params
from dualattn.run.data import Data
from dualattn.run.workdir import RunDir, atomic_write

FIGSIZE = (7.2, 3.4)  # inches, at DPI: 720 x 340 pixels
DPI = 100
ROC_BINS = 2000  # thresholds of the drawn ROC (the TPR@FPR points are exact)
HISTOGRAM_BINS = 50  # of the pair-distance histogram: ROC_BINS merged in groups
STYLE = ("body{font-family:system-ui,sans-serif;max-width:1180px;margin:2em auto;color:#222;"
         "line-height:1.4}img{max-width:100%;border:1px solid #ddd}.s{font-family:monospace}"
         "table{border-collapse:collapse;margin:0.5em 0}td,th{padding:2px 10px;text-align:"
         "right;border-bottom:1px solid #eee}th{background:#f4f4f4}td:first-child,"
         "th:first-child{text-align:left}pre{background:#f8f8f8;padding:8px;overflow-x:auto}")


# ---------------------------------------------------------------------------------------------
# Charts


def _axes(title: str, xlabel: str, ylabel: str, size=FIGSIZE):
    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title, fontsize=11)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return fig, ax


def training_charts(rows: list[dict], loss_terms=()) -> list[tuple[str, Figure]]:
    """The curves of a run's ``metrics.jsonl`` rows: the loss and its ``loss_terms``, the
    learning rate (log axis), the self-attention gate, the evaluations (best mAP marked)."""
    train = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "mAP" in r]
    charts = []
    if train:
        steps = np.array([r["step"] for r in train])
        fig, ax = _axes("Training loss", "step", "loss")
        for k in ("loss", *loss_terms):
            if k in train[0]:
                ax.plot(steps, [r[k] for r in train], label=k)
        ax.legend()
        charts.append(("Training loss", fig))
        fig, ax = _axes("Learning rate", "step", "learning rate (log scale)")
        ax.semilogy(steps, [r["lr"] for r in train])
        charts.append(("Learning rate", fig))
        if "alpha" in train[0]:
            fig, ax = _axes("Self-attention gate", "step", "alpha")
            ax.plot(steps, [r["alpha"] for r in train])
            charts.append(("Self-attention gate", fig))
    if evals:
        steps = np.array([r["step"] for r in evals])
        fig, ax = _axes("Test scores at each evaluation", "step", "score")
        for k, label in (("mAP", "mAP"), ("rank1", "rank-1")):
            ax.plot(steps, [r[k] for r in evals], marker="o", label=label)
        best = int(np.argmax([r["mAP"] for r in evals]))
        ax.plot(steps[best], evals[best]["mAP"], marker="*", markersize=16, color="gold",
                markeredgecolor="black", linestyle="none",
                label=f"best mAP {100 * evals[best]['mAP']:.1f} % (step {steps[best]})")
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.set_ylim(0, 1)
        ax.legend(loc="best")
        charts.append(("Test scores at each evaluation", fig))
    return charts


def cmc_chart(curves: dict[str, np.ndarray]) -> Figure:
    """CMC curves (name -> fraction matched within rank k, k = 1..)."""
    fig, ax = _axes("CMC: a true match within the top k", "rank k", "queries matched")
    for name, c in curves.items():
        ax.plot(np.arange(1, len(c) + 1), c, label=name)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_ylim(0, 1)
    ax.legend(loc="lower right")
    return fig


def pair_distances(scores: Scores, ids: dict, bins: int = ROC_BINS,
                   chunk_size: int = 256) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(edges, positives, negatives)``: histograms of the distances of the protocol's
    positive and negative query-gallery pairs (junk left out, as in CMC), over one range."""
    (q_pids, q_cams), (g_pids, g_cams) = ids["query"], ids["gallery"]
    dist = scores.distances
    edges = np.linspace(float(dist.min()), float(dist.max()) + 1e-6, bins + 1)
    pos, neg = np.zeros(bins, np.int64), np.zeros(bins, np.int64)
    for start in range(0, len(dist), chunk_size):
        sl = slice(start, start + chunk_size)
        positive, negative = pair_masks(q_pids[sl], q_cams[sl], g_pids, g_cams)
        pos += np.histogram(dist[sl][positive], edges)[0]
        neg += np.histogram(dist[sl][negative], edges)[0]
    return edges, pos, neg


def roc_chart(edges, pos, neg, tpr_at_fpr: dict) -> Figure:
    """The ROC of thresholds at the histogram's edges (false positive rate on a log axis),
    with the exact TPR@FPR points."""
    fpr, tpr = np.cumsum(neg) / max(neg.sum(), 1), np.cumsum(pos) / max(pos.sum(), 1)
    keep = fpr > 0
    fig, ax = _axes("ROC of the query-gallery pairs", "false positive rate (log scale)",
                    "true positive rate")
    ax.semilogx(fpr[keep], tpr[keep], label="thresholds")
    for f, t in tpr_at_fpr.items():
        ax.plot(f, t, marker="o", color="crimson", linestyle="none")
        ax.annotate(f"{100 * t:.1f} % at {f:.0e}", (f, t), textcoords="offset points",
                    xytext=(4, 8), fontsize=9)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_ylim(0, 1.02)
    ax.set_xlim(left=min(1e-5, *tpr_at_fpr) if tpr_at_fpr else None, right=1)
    return fig


def distance_histogram(edges, pos, neg, bins: int = HISTOGRAM_BINS) -> Figure:
    """Positive and negative pairs' distances, each as a density (their counts differ by
    orders of magnitude), the fine histograms merged into ``bins``."""
    if len(pos) % bins == 0:
        group = len(pos) // bins
        edges, pos, neg = edges[::group], pos.reshape(bins, group).sum(1), neg.reshape(
            bins, group).sum(1)
    fig, ax = _axes("Distances of positive and negative pairs", "distance", "density")
    width = np.diff(edges)
    for counts, label, colour in ((pos, "same identity", "tab:green"),
                                  (neg, "different identities", "tab:red")):
        ax.stairs(counts / max(counts.sum(), 1) / width, edges, fill=True, alpha=0.45,
                  color=colour, label=f"{label} ({counts.sum():,} pairs)")
    ax.legend()
    return fig


# ---------------------------------------------------------------------------------------------
# Tables and the page


def _table(head: list[str], rows: list[list[str]], bold: int | None = None) -> str:
    cells = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for i, row in enumerate(rows):
        tag = ("<td><b>", "</b></td>") if i == bold else ("<td>", "</td>")
        cells.append("<tr>" + "".join(f"{tag[0]}{html.escape(c)}{tag[1]}" for c in row)
                     + "</tr>")
    return "".join(cells) + "</table>"


def evaluations_table(rows: list[dict]) -> str:
    """Every logged evaluation: step, epoch, R1, R5, R10, mAP, mINP, TPR@FPR; best mAP bold."""
    evals = [r for r in rows if "mAP" in r]
    rates = [k for k in evals[0] if k.startswith("tpr@fpr")] if evals else []
    head = ["step", "epoch", "R1", "R5", "R10", "mAP", "mINP",
            *[f"TPR@FPR={k[len('tpr@fpr'):]}" for k in rates]]
    body = [[str(r["step"]), str(r.get("epoch", "")),
             *[f"{100 * r[k]:.2f} %" for k in ("rank1", "rank5", "rank10", "mAP", "mINP",
                                                *rates)]] for r in evals]
    best = int(np.argmax([r["mAP"] for r in evals])) if evals else None
    return _table(head, body, best)


def dataset_table(data: Data) -> str:
    """Identities, images and cameras of each split."""
    return _table(["split", "identities", "images", "cameras"],
                  [[name, f"{len(np.unique(p)):,}", f"{len(p):,}", str(len(np.unique(c)))]
                   for name, (p, c) in data.ids.items()])


def run_facts(rows: list[dict], batch: int, parameters: int) -> str:
    """Parameter count, training images/s (median of the logged windows) and wall time (the
    windows' lengths summed: training, evaluations and checkpoints, from the first step)."""
    train = [r for r in rows if "images_per_s" in r]
    facts = [f"{parameters:,} trainable parameters"]
    if train:
        steps = np.diff([0] + [r["step"] for r in train])
        wall = float(np.sum(steps * batch / np.array([r["images_per_s"] for r in train])))
        minutes, seconds = divmod(round(wall), 60)
        facts.append(f"training throughput {np.median([r['images_per_s'] for r in train]):,.0f}"
                     f" images/s (median over the logged windows)")
        facts.append(f"wall time {minutes} min {seconds:02d} s for {train[-1]['step']} steps "
                     "from the first step on, evaluations and checkpoints included (start-up, "
                     "data preparation and baselines before it are not)")
    return "; ".join(facts) + "."


def _png(figure) -> str:
    buffer = io.BytesIO()
    if isinstance(figure, Image.Image):
        figure.save(buffer, format="PNG")
    else:
        figure.savefig(buffer, format="png", dpi=DPI)
    return base64.b64encode(buffer.getvalue()).decode()


def write_report(out: Path, title: str, summary: list[str], panels: list[tuple]) -> Path:
    """The page: ``summary`` lines, then each panel ``(heading, text, content)``, the content a
    matplotlib ``Figure``, a Pillow image, HTML (``str``) or None."""
    parts = ["<!doctype html><html><head><meta charset='utf-8'>",
             f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    parts += [f"<p class='s'>{html.escape(line)}</p>" for line in summary]
    for heading, text, content in panels:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        if text:
            parts.append(f"<p>{html.escape(text)}</p>")
        if isinstance(content, str):
            parts.append(content)
        elif content is not None:
            parts.append(f"<img alt='{html.escape(heading)}' "
                         f"src='data:image/png;base64,{_png(content)}'>")
    parts.append("</body></html>")
    return atomic_write(out, "\n".join(parts) + "\n")


def hardest_and_typical(scores: Scores, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` valid queries of lowest AP, and ``n`` around the median AP."""
    valid = np.flatnonzero(scores.valid)
    by_ap = valid[np.argsort(scores.ap[valid], kind="stable")]
    middle = max(0, len(by_ap) // 2 - n // 2)
    return by_ap[:n], by_ap[middle:middle + n]


def gate_sentence(gate: float) -> str:
    """How to read the attention gate's value."""
    return (f"The module's output o enters the feature map as alpha * o + x, with alpha = "
            f"{gate:.4f} here: where o is of the size of x, the module changes the map by "
            f"about {100 * abs(gate):.2g} %, so a gate near 0 means the features are "
            "essentially the backbone's own.")


def write_run_report(config, run: RunDir, out: Path, data: Data, label: str, step: int,
                     scores: Scores, model, loss_terms=(), queries: int = 6) -> Path:
    """The report of one scored model (``model``: its ``graphdef`` and ``state``) of ``run``.
    Every process of a multi-process run would have to join the attention maps' jitted pass,
    so only single-process runs call this."""
    baselines = run.load_baselines()
    rows = run.rows()
    summary = [f"{label} model (step {step}): {scores.describe()}"]
    curves = {f"{label} (step {step})": scores.cmc}
    if baselines:
        summary.append(baselines_line(scores.mAP, baselines))
        curves["untrained network"] = np.asarray(baselines["untrained"]["cmc"])
    parameters = count_params(nnx.merge(model.graphdef, model.state))
    panels = [("Evaluations", "Test scores at every evaluation of the run (bold: the best "
               "mAP, which is model selection on the test set if you report it).",
               evaluations_table(rows)),
              ("The run", run_facts(rows, config.input.p * config.input.k, parameters),
               dataset_table(data)),
              ("Config", "", "<details><summary>the run's resolved config</summary><pre>"
               + html.escape(json.dumps(config.to_dict(), indent=1, default=str))
               + "</pre></details>")]
    panels += [(name, "", chart) for name, chart in training_charts(rows, loss_terms)]
    panels.append(("CMC curve", "The fraction of queries whose first true match (another "
                   "camera's image of the same identity) is within the top k.",
                   cmc_chart(curves)))
    edges, pos, neg = pair_distances(scores, data.ids)
    panels.append(("ROC curve", "Every query-gallery pair the protocol ranks, accepted when "
                   "closer than a threshold: the share of same-identity pairs accepted "
                   "against the share of different-identity pairs; the points are the exact "
                   f"{', '.join(f'TPR@FPR={f:.0e}' for f in scores.tpr_at_fpr)}.",
                   roc_chart(edges, pos, neg, scores.tpr_at_fpr)))
    panels.append(("Pair distances", "", distance_histogram(edges, pos, neg)))
    hardest, typical = hardest_and_typical(scores, queries)
    caption = ("Queries (grey) and their ten nearest gallery images, green the same identity "
               "and red another, each captioned rank:distance over p<identity> c<camera>; "
               "each query with its identity, camera and AP over the whole gallery, and "
               "#rank of its first true match when that is below rank 10.")
    panels.append(("Ranked lists: the hardest queries", "The queries of lowest AP. " + caption,
                   ranked_lists(config, data, scores, queries, which=hardest)))
    panels.append(("Ranked lists: typical queries", "The queries around the median AP.",
                   ranked_lists(config, data, scores, queries, which=typical)))
    if config.model.use_sa:
        attention, gate = attention_image(config, model, data, 4)
        panels.append(("Self-attention", "Where the spatial self-attention module looks: "
                       "the attention each feature-map position receives, scaled within "
                       "each image. " + gate_sentence(gate), attention))
    title = f"dualattn: {run.path.name}, {label} model"
    return write_report(out, title, summary, panels)
