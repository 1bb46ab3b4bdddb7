"""The run report a newcomer opens: every panel present and every figure decodes, checked
without a browser."""

import base64
import io
import re

import numpy as np
from PIL import Image

from dualattn.evaluation.figures import WHITE
from dualattn.evaluation.report import line_chart
from tests.helpers import run_command

PANELS = ("Training loss", "Learning rate", "Self-attention gate",
          "Test scores at each evaluation", "CMC curve", "Ranked lists", "Self-attention")


def figures(page: str) -> dict[str, Image.Image]:
    """heading -> the decoded image under it."""
    found = re.findall(r"<img alt='([^']+)' src='data:image/png;base64,([^']+)'>", page)
    return {alt: Image.open(io.BytesIO(base64.b64decode(data))) for alt, data in found}


def test_training_writes_a_report_with_every_panel(trained_run):
    _, run = trained_run
    page = (run / "report.html").read_text()
    images = figures(page)
    assert list(images) == list(PANELS)
    for image in images.values():
        image.load()
        assert image.width > 100 and image.height > 100
    assert re.search(r"final model \(step \d+\): rank1 \d+\.\d\d%", page)
    assert "baselines: mAP" in page and "for colour histograms" in page  # eval.baselines on
    cmc = np.asarray(images["CMC curve"].convert("RGB"))
    assert (cmc != WHITE).any(axis=-1).sum() > 1000  # two curves drawn, not a blank frame


def test_evaluate_writes_the_same_report_for_any_checkpoint(trained_run, tmp_path):
    _, run = trained_run
    proc = run_command("dualattn.evaluate", "--workdir", str(run), "--checkpoint", "best",
                       "--report", "--figures_dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    page = (tmp_path / "report_best.html").read_text()
    assert list(figures(page)) == list(PANELS)
    assert "best (test-selected) model (step" in page


def test_a_line_chart_draws_each_series_in_its_colour():
    chart = np.asarray(line_chart({"a": (np.arange(10), np.arange(10.0)),
                                   "b": (np.arange(10), 9 - np.arange(10.0))}, "t", "x"))
    for colour in ((31, 119, 180), (214, 39, 40)):
        assert (chart == colour).all(axis=-1).sum() > 50
