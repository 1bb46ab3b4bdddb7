"""Scoring a trained run: the final, best and untrained models, what evaluate prints given only
a workdir, and its table of test-time variants."""

from pathlib import Path

import pytest
from PIL import Image

from configs import saved
from dualattn.evaluation.evaluator import ReIDEvaluator
from dualattn.evaluation.scores import format_table
from dualattn.run.checkpoint import CheckpointNotFoundError
from dualattn.run.data import load_data
from dualattn.run.model import load_model
from dualattn.run.workdir import RunDir
from tests.helpers import assert_one_error_line, evaluate_run, read_rows, run_command

pytestmark = pytest.mark.filterwarnings("ignore:Market-1501 counts")


def test_evaluate_scores_best_latest_and_untrained(trained_run, tmp_path):
    c, run = trained_run
    best_row = max((r for r in read_rows(run) if "mAP" in r), key=lambda r: r["mAP"])
    step, best = evaluate_run(c, run, "best")
    assert step == best_row["step"] and best.mAP == pytest.approx(best_row["mAP"], abs=1e-6)
    step, _ = evaluate_run(c, run, "latest")
    assert step == read_rows(run)[-1]["step"]
    step, untrained = evaluate_run(c, run, "untrained")
    assert step == 0 and untrained.mAP != best.mAP
    table = format_table([("best", 12, best)])
    assert "mAP" in table.splitlines()[0] and f"{100 * best.mAP:.2f}%" in table
    assert 0 < best.valid_queries <= best.queries
    assert table.splitlines()[-1] == (f"{best.valid_queries} of {best.queries} queries "
                                      "have a valid match")
    for which in ("best", "latest"):
        with pytest.raises(CheckpointNotFoundError,
                           match=f"no {which} checkpoint under .*train the run first"):
            evaluate_run(c, tmp_path / "empty", which)


def test_later_commands_need_only_the_workdir(trained_run, tmp_path):
    """The run saved its resolved config; evaluate reads it, scores the final model by default
    (writing the figures asked for), labels the test-selected checkpoint, and refuses an
    override that changes the model."""
    c, run = trained_run
    again = saved.get_config(str(RunDir(run).config))
    expected = c.copy_and_resolve_references()
    expected.dataset.root = str(Path(c.dataset.root).absolute())
    expected.dataset.data_dir = str(Path(c.dataset.data_dir).absolute())
    assert again.to_dict() == expected.to_dict()

    proc = run_command("dualattn.evaluate", "--workdir", str(run), "--visualize", "3",
                       "--attention", "2", "--figures_dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["attention.png", "ranked_lists.png"]
    for name in ("attention.png", "ranked_lists.png"):
        with Image.open(tmp_path / name) as image:
            image.load()
    final = [r for r in read_rows(run) if "mAP" in r][-1]
    (line,) = [line for line in proc.stdout.splitlines() if line.startswith("final ")]
    assert line.split()[1] == str(final["step"]) and f"{100 * final['mAP']:.2f}%" in line
    # Verification rates too, as logged at each evaluation.
    assert line.split()[-1] == f"{100 * final['tpr@fpr1e-02']:.2f}%"
    proc = run_command("dualattn.evaluate", "--workdir", str(run), "--checkpoint=best")
    assert proc.returncode == 0 and "best (test-selected)" in proc.stdout, proc.stderr[-2000:]
    proc = run_command("dualattn.evaluate", "--workdir", str(run), "--config.model.use_sa=False")
    assert_one_error_line(proc, "does not match this model configuration")


def test_evaluate_variants_table(trained_run):
    c, run = trained_run
    model = load_model(c, run, "best")
    evaluator = ReIDEvaluator(c, load_data(c))
    rows = evaluator.variants(model)
    names = [name for name, _ in rows]
    assert names == [f"{feature}{flip}{aqe}{rerank}" for feature in ("after", "before")
                     for flip in ("", " +flip") for aqe in ("", " +aqe")
                     for rerank in ("", " +rerank")]
    _, default = evaluate_run(c, run, "best")
    assert dict(rows)["after"].rates() == pytest.approx(default.rates(), abs=1e-6)
    assert c.eval.flip_test is False  # the caller's config is untouched
    assert len({round(s.mAP, 6) for _, s in rows}) > 1
    table = format_table([(f"best: {n}", model.step, s) for n, s in rows])
    assert "best: before +flip +rerank" in table
    assert table.splitlines()[0].split()[-3:] == ["TPR@1e-04", "TPR@1e-03", "TPR@1e-02"]


def test_evaluate_refuses_a_workdir_without_checkpoints(tmp_path):
    proc = run_command("dualattn.evaluate", "--config", "configs/tiny.py", "--workdir",
                       str(tmp_path / "empty"))
    assert_one_error_line(proc, "no latest checkpoint under")


def test_figures_need_a_folder_to_go_to(trained_run, tmp_path):
    (tmp_path / "a_file").write_text("")
    proc = run_command("dualattn.evaluate", "--workdir", str(trained_run[1]), "--visualize",
                       "2", "--figures_dir", str(tmp_path / "a_file"))
    assert_one_error_line(proc, f"--figures_dir {tmp_path / 'a_file'} is not a folder")


def test_an_unexpected_argument_is_one_line(tmp_path):
    proc = run_command("dualattn.evaluate", "--config", "configs/tiny.py", "--workdir",
                       str(tmp_path), "stray")
    assert_one_error_line(proc, "unexpected arguments ['stray']")
