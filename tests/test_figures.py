"""The figures of a scored model: ranked lists framed and captioned from its Scores, and the
attention maps with their colour scale and gate."""

import numpy as np
import pytest
from flax import nnx

from dualattn.evaluation import figures
from dualattn.evaluation.evaluator import ReIDEvaluator
from dualattn.evaluation.metrics import evaluate_rank_reference, kept_ranking
from dualattn.run.data import load_data
from dualattn.run.model import load_model

pytestmark = pytest.mark.filterwarnings("ignore:Market-1501 counts")


def test_ranked_list_and_attention_figures(trained_run):
    c, run = trained_run
    h, w = c.input.height, c.input.width  # 64 x 32: thumbnails at input size
    data, model = load_data(c), load_model(c, run, "best")
    scores = ReIDEvaluator(c, data)(model)
    fig = figures.ranked_lists(c, data, scores, 3)
    cell_w, cell_h = (w + 2 * figures.FRAME + figures.CELL_PAD,
                      h + 2 * figures.FRAME + figures.CELL_PAD + 2 * figures.LABEL_H)
    assert fig.size == (11 * cell_w + figures.QUERY_GAP, 3 * cell_h)
    pixels = np.asarray(fig.convert("RGB"))
    # Every retrieved image is framed green or red (the frame's top-left pixel), and captioned
    # (dark text in the line under it).
    for col in range(1, 11):
        x = figures.QUERY_GAP + col * cell_w
        assert tuple(pixels[0, x]) in (figures.GREEN, figures.RED)
        caption = pixels[h + 2 * figures.FRAME:cell_h - figures.CELL_PAD, x:x + cell_w]
        assert (caption.max(axis=-1) < 100).any()
    # The APs under the queries are the per-query ones of the protocol's definition, and the
    # lists are its ranking: the query identity's same-camera images left out.
    (qp, qc), (gp, gc) = data.ids["query"], data.ids["gallery"]
    reference = evaluate_rank_reference(scores.distances, qp, gp, qc, gc)
    np.testing.assert_allclose(scores.ap, reference.ap, atol=1e-12)
    order = kept_ranking(scores.distances[0], qp[0], qc[0], gp, gc)
    assert not ((gp[order] == qp[0]) & (gc[order] == qc[0])).any()
    assert len(order) == len(gp) - ((gp == qp[0]) & (gc == qc[0])).sum()

    fig, gate = figures.attention_image(c, model, data, 4)
    network = nnx.merge(model.graphdef, model.state)
    assert gate == pytest.approx(float(network.attention.alpha[...])) and gate != 0
    big_h = figures.ATTENTION_H  # readable whatever the input size: 256 high, aspect kept
    big_w = round(w * big_h / h)
    scale_x = 4 * (2 * big_w + 2 * figures.CELL_PAD)
    assert fig.size == (scale_x + figures.SCALE_W + 40,
                        figures.HEADER_H + big_h + figures.CELL_PAD)
    pixels = np.asarray(fig.convert("RGB"))
    top, bottom = figures.colormap(np.array([1.0, 0.0]))  # the scale runs most -> least
    np.testing.assert_array_equal(pixels[figures.HEADER_H, scale_x], top)
    np.testing.assert_array_equal(pixels[figures.HEADER_H + big_h - 1, scale_x], bottom)
    assert (pixels[:figures.HEADER_H].max(axis=-1) < 100).any()  # the header line


def test_colormap_runs_cold_to_hot():
    cold, hot = figures.colormap(np.array([0.0, 1.0]))
    assert cold[2] > cold[0] and hot[0] > hot[2]  # blue at 0, red at 1
