"""The run report a newcomer opens: every panel present, every figure decodes, the tables hold
what the run logged; and the pieces (query selection, wall time, pair histograms) on small
cases."""

import base64
import io
import re

import numpy as np
from PIL import Image

from dualattn.evaluation.figures import WHITE
from dualattn.evaluation.report import hardest_and_typical, pair_distances, run_facts
from dualattn.evaluation.scores import Scores
from dualattn.run.workdir import RunDir
from tests.helpers import run_command

PANELS = ("Training loss", "Learning rate", "Self-attention gate",
          "Test scores at each evaluation", "CMC curve", "ROC curve", "Pair distances",
          "Ranked lists: the hardest queries", "Ranked lists: typical queries", "Self-attention")


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
    # Every evaluation in the table, the best mAP in bold; the splits; the parameter count.
    evals = [r for r in RunDir(run).rows() if "mAP" in r]
    table = page[page.index("<h2>Evaluations</h2>"):page.index("<h2>The run</h2>")]
    assert table.count("<tr>") == len(evals) + 1 and "TPR@FPR=1e-04" in table
    best = max(evals, key=lambda r: r["mAP"])
    assert f"<td><b>{100 * best['mAP']:.2f} %</b></td>" in table
    for split in ("train", "query", "gallery"):
        assert f"<td>{split}</td>" in page
    assert re.search(r"[\d,]+ trainable parameters; training throughput [\d,]+ images/s", page)
    assert "<details><summary>the run's resolved config" in page
    assert "alpha * o + x, with alpha = " in page


def test_evaluate_writes_the_same_report_for_any_checkpoint(trained_run, tmp_path):
    _, run = trained_run
    proc = run_command("dualattn.evaluate", "--workdir", str(run), "--checkpoint", "best",
                       "--report", "--figures_dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    page = (tmp_path / "report_best.html").read_text()
    assert list(figures(page)) == list(PANELS)
    assert "best (test-selected) model (step" in page


def test_the_hardest_queries_are_those_of_lowest_ap_and_typical_ones_the_median():
    ap = np.array([0.9, 0.1, 0.5, 0.0, 0.7, 0.3, 0.2])
    valid = np.array([True, True, True, False, True, True, True])
    scores = Scores(cmc=np.ones(1), ap=ap, inp=ap, first_rank=np.zeros(7, int), valid=valid,
                    distances=np.zeros((7, 1)))
    hardest, typical = hardest_and_typical(scores, 2)
    assert hardest.tolist() == [1, 6]  # AP 0.1, 0.2; the invalid query (AP 0) is not scored
    assert typical.tolist() == [5, 2]  # around the median of 0.1 0.2 0.3 0.5 0.7 0.9


def test_wall_time_sums_the_logged_windows():
    rows = [{"step": 10, "images_per_s": 32.0}, {"step": 20, "images_per_s": 64.0}]
    assert "wall time 0 min 15 s for 20 steps" in run_facts(rows, batch=32, parameters=5)


def test_the_pair_histograms_count_the_protocols_pairs():
    """One query (pid 1, camera 0): its same-camera match is junk, counted in neither."""
    dist = np.array([[0.1, 0.2, 0.3, 0.4]], np.float32)
    scores = Scores(cmc=np.ones(1), ap=np.ones(1), inp=np.ones(1), first_rank=np.zeros(1, int),
                    valid=np.ones(1, bool), distances=dist)
    ids = {"query": (np.array([1]), np.array([0])),
           "gallery": (np.array([1, 1, 2, 3]), np.array([0, 1, 0, 0]))}
    _, pos, neg = pair_distances(scores, ids, bins=4)
    assert pos.tolist() == [0, 1, 0, 0] and neg.tolist() == [0, 0, 1, 1]
