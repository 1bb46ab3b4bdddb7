"""The training loop end to end on the tiny config: it learns, logs, checkpoints, resumes,
evaluates each time from one distance matrix, and keeps its state safe when a step fails."""

import os
import re
import shutil

import jax
import numpy as np
import pytest

from dualattn.evaluation import evaluator as evaluator_module
from dualattn.evaluation import figures, metrics, rerank
from dualattn.run.checkpoint import CheckpointDamagedError, Checkpointer, CheckpointMismatchError
from dualattn.run.data import load_data
from dualattn.run.model import create_train_state, load_model
from dualattn.run.record import RunRecordError
from dualattn.run.workdir import RunDir, WorkdirInUseError
from dualattn.training.loop import Trainer, train_and_evaluate
from dualattn.training.losses import TERMS
from tests.helpers import assert_one_error_line, read_rows, run_command, tiny_config

pytestmark = pytest.mark.filterwarnings("ignore:Market-1501 counts")


@pytest.fixture
def distance_calls(monkeypatch):
    """Every distance computation for scoring, counted by kind: the metric's matrix and the
    re-ranked one, wherever they are called from."""
    calls = {"metric": 0, "rerank": 0}

    def counted(kind, real):
        def wrapper(*args, **kwargs):
            calls[kind] += 1
            return real(*args, **kwargs)
        return wrapper

    for module in (evaluator_module, metrics):
        monkeypatch.setattr(module, "compute_distance_matrix",
                            counted("metric", metrics.compute_distance_matrix))
    for module in (evaluator_module, rerank):
        monkeypatch.setattr(module, "re_ranking_features",
                            counted("rerank", rerank.re_ranking_features))
    return calls


@pytest.mark.parametrize("sampler", ["identity", "uniform"])
def test_trains_evaluates_checkpoints_and_resumes_exactly(sampler, data_paths, tmp_path,
                                                          distance_calls):
    def config(epochs):
        c = tiny_config(data_paths, epochs=epochs)
        c.input.sampler = sampler
        return c

    straight = tmp_path / "straight"
    result = train_and_evaluate(config(3), straight)
    rows = read_rows(straight)
    train_rows = [r for r in rows if "loss" in r]
    eval_rows = [r for r in rows if "mAP" in r]
    assert len(eval_rows) == 3
    # One distance matrix per evaluation, though each also draws its ranked lists.
    assert distance_calls == {"metric": 3, "rerank": 0}
    for key in ("step", "rank1", "rank5", "rank10", "mAP", "mINP"):
        assert key in eval_rows[-1]
    for key in ("loss", *TERMS, "lr", "images_per_s", "alpha"):
        assert key in train_rows[-1]
    assert train_rows[0]["alpha"] != 0  # the gate starts at 0 and moves with the first step
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator")
    acc = event_accumulator.EventAccumulator(str(straight / "tensorboard"),
                                             size_guidance={"images": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("eval/mAP")] == [r["step"] for r in eval_rows]
    assert [e.value for e in acc.Scalars("train/alpha")] == pytest.approx(
        [r["alpha"] for r in train_rows], abs=1e-6)
    ranked = acc.Images("eval/ranked_lists")  # one ranked-list figure per evaluation
    assert [e.step for e in ranked] == [r["step"] for r in eval_rows]
    c = config(3)
    cell_w = c.input.width + 2 * figures.FRAME + figures.CELL_PAD
    cell_h = c.input.height + 2 * figures.FRAME + figures.CELL_PAD + 2 * figures.LABEL_H
    assert (ranked[-1].width, ranked[-1].height) == (
        11 * cell_w + figures.QUERY_GAP, c.eval.ranked_list_queries * cell_h)
    assert b"optim.lr" in acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    assert acc.Scalars("train/loss")[-1].value == pytest.approx(train_rows[-1]["loss"], abs=1e-6)
    losses = [r["loss"] for r in train_rows]
    assert np.mean(losses[-4:]) < np.mean(losses[:4])  # it learns
    rates = result.rates()
    assert rates == pytest.approx({k: eval_rows[-1][k] for k in rates}, abs=1e-6)  # 6 decimals

    # One epoch, stop, then two more in the same workdir: same parameters as straight through.
    resumed = tmp_path / "resumed"
    train_and_evaluate(config(1), resumed)
    train_and_evaluate(config(3), resumed)
    assert [r["step"] for r in read_rows(resumed) if "loss" in r] == [r["step"] for r in train_rows]

    def params(workdir):
        c = tiny_config(data_paths)
        data = load_data(c)
        target = create_train_state(c, data.num_classes, data.sampler.steps_per_epoch).state
        state, _, _ = Checkpointer(RunDir(workdir)).restore_latest(target)
        assert set(state) == {"model", "optimizer"}  # the checkpoint's named parts
        return state

    for a, b in zip(jax.tree.leaves(params(straight)), jax.tree.leaves(params(resumed)),
                    strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_with_re_ranking_each_evaluation_re_ranks_once(data_paths, tmp_path, distance_calls):
    """Re-ranking on, with the baselines measured first and the report written last: still
    one re-ranking per evaluation of the network, and one plain matrix for the colour
    histograms (which are not re-ranked)."""
    c = tiny_config(data_paths, epochs=2)
    c.eval.rerank = c.eval.baselines = c.eval.report = True
    train_and_evaluate(c, tmp_path)
    evaluations = len([r for r in read_rows(tmp_path) if "mAP" in r])
    assert evaluations == 2
    assert distance_calls == {"metric": 1, "rerank": evaluations + 1}  # + the untrained net
    assert RunDir(tmp_path).report().is_file()


def test_a_failed_evaluation_loses_no_training_and_is_redone_on_resume(data_paths, tmp_path,
                                                                      monkeypatch):
    c = tiny_config(data_paths, epochs=2)
    real = Trainer.evaluate
    calls = []

    def fails_the_second_time(self, log):
        calls.append(1)
        if len(calls) == 2:
            raise MemoryError("out of memory while scoring")
        return real(self, log)

    monkeypatch.setattr(Trainer, "evaluate", fails_the_second_time)
    with pytest.raises(MemoryError):
        train_and_evaluate(c, tmp_path)
    monkeypatch.setattr(Trainer, "evaluate", real)
    run = RunDir(tmp_path)
    last = max(r["step"] for r in read_rows(tmp_path))
    assert Checkpointer(run).latest_step() == last  # the epoch's checkpoint came first
    assert [r["step"] for r in read_rows(tmp_path) if "mAP" in r] == [last // 2]
    result = train_and_evaluate(c, tmp_path)  # resumes: evaluates the last step first
    evals = [r for r in read_rows(tmp_path) if "mAP" in r]
    assert [r["step"] for r in evals] == [last // 2, last]
    assert result.mAP == pytest.approx(evals[-1]["mAP"], abs=1e-6)
    best = max(evals, key=lambda r: r["mAP"])
    assert run.checkpoint_steps("best") == [best["step"]]


def test_checkpoint_of_another_model_is_refused_with_the_fix(data_paths, tmp_path):
    """Without its config.json (a run converted from PyTorch weights has none), the
    checkpoint itself says it was written by another model."""
    train_and_evaluate(tiny_config(data_paths, epochs=1), tmp_path)
    RunDir(tmp_path).config.unlink()
    c = tiny_config(data_paths, epochs=2)
    c.model.use_sa = False
    with pytest.raises(CheckpointMismatchError, match="does not match this model .*new --workdir"):
        train_and_evaluate(c, tmp_path)


def unchanged(workdir):
    """What a refused resume must leave as it was: the record, the log, the checkpoints."""
    run = RunDir(workdir)
    return (run.config.read_bytes(), run.metrics.read_bytes(),
            sorted(p.name for p in run.checkpoint_dir("latest").iterdir()))


@pytest.mark.parametrize("change,message", [
    ({"optim.lr": 0.5}, r"other settings \(optim.lr: 0.001 in the run, 0.5 now\)"),
    ({"dataset.root": "elsewhere"}, r"other settings \(dataset.root: .* in the run, .*elsewhere"),
    ({"optim.epochs": 1}, r"has trained 24 steps \(2 epochs\), more than "
                          r"--config.optim.epochs=1"),
])
def test_a_finished_run_resumed_with_other_settings_is_refused_and_left_as_it_was(
        trained_run, change, message):
    c, run = trained_run
    before = unchanged(run)
    c = c.copy_and_resolve_references()
    for key, value in change.items():
        section, leaf = key.split(".")
        c[section][leaf] = value
    with pytest.raises(RunRecordError, match=message):
        train_and_evaluate(c, run)
    assert unchanged(run) == before


def test_a_second_trainer_on_a_workdir_is_refused(trained_run):
    c, run = trained_run
    before = unchanged(run)
    with RunDir(run).exclusive():
        with pytest.raises(WorkdirInUseError, match="in use by another trainer"):
            train_and_evaluate(c, run)
    assert unchanged(run) == before


# Reading a damaged checkpoint leaves tensorstore callbacks that report as unraisable
# exceptions; the commands silence them (dualattn.cli), pytest warns of them.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_damaged_checkpoint_is_skipped_and_changed_data_is_refused(trained_run, data_paths,
                                                                     tmp_path, capsys):
    """The newest checkpoint cut short: evaluation refuses it naming the intact best one, and
    training resumes from the previous one, saying so. Then the dataset's files change and
    it is prepared afresh elsewhere: the same config is refused, since the checkpoints were
    trained on other data. (``trained_run`` generated the dataset copied here.)"""
    raw = tmp_path / "raw"
    shutil.copytree(data_paths[0], raw)
    c = tiny_config((raw, tmp_path / "tfds"), epochs=2)
    workdir = tmp_path / "run"
    train_and_evaluate(c, workdir)
    run = RunDir(workdir)
    assert run.checkpoint_steps("latest") == [12, 24]
    for chunk in (run.checkpoint_dir("latest") / "24").rglob("ocdbt.process_0/d/*"):
        os.truncate(chunk, chunk.stat().st_size // 2)  # every data file of the step cut short
    with pytest.raises(CheckpointDamagedError, match=r"the latest checkpoint \(step 24\) .* "
                                                     r"cannot be read .*; the best checkpoint "
                                                     r"\(step \d+\) is intact: pass "
                                                     r"--checkpoint=best"):
        load_model(c, workdir, "latest")
    capsys.readouterr()
    train_and_evaluate(c, workdir)
    out = capsys.readouterr().out
    assert re.search(r"the checkpoint at step 24 cannot be read \(.*\); set aside as "
                     r".*24\.damaged; resuming from step 12, the newest intact one", out)
    assert run.checkpoint_steps("latest") == [12, 24]  # step 24 trained and saved again
    assert [r["step"] for r in read_rows(workdir) if "mAP" in r] == [12, 24]

    image = next((raw / "query").glob("*.jpg"))
    os.utime(image, (0, 0))
    c.dataset.data_dir = str(tmp_path / "tfds_again")
    c.optim.epochs = 3
    with pytest.raises(RunRecordError, match=r"was trained on other data: on .*raw before its "
                                             r"files changed \(\d+ files"):
        train_and_evaluate(c, workdir)


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(
        data_paths, tmp_path):
    c = tiny_config(data_paths, epochs=2)
    # BoT's schedule runs epoch E at t = E + 1, so a decay at 2 by NaN turns the rate NaN from
    # the second epoch's first step (13): its loss comes from good parameters, its update
    # poisons them, so the loss first turns NaN one step later.
    c.optim.decay_epochs, c.optim.decay_factor = (2,), float("nan")
    with pytest.raises(FloatingPointError, match="at step 14;"):
        train_and_evaluate(c, tmp_path)
    assert RunDir(tmp_path).checkpoint_steps("latest") == [12]


@pytest.mark.parametrize("override,message", [
    ("--config.model.nonexistent=1", "unknown config key 'nonexistent'"),
    ("--config.optim.epoch=3", """unknown config key 'epoch' in --config.optim.epoch (did you """
                               """mean "epochs"?)"""),
    ("--config.model.width=abc", "invalid literal"),
    ("--config=configs/no_such_config.py", "cannot load the config file "
                                           "configs/no_such_config.py ([Errno 2]"),
])
def test_bad_overrides_give_one_clear_line(override, message, tmp_path):
    proc = run_command("dualattn.train", "--config", "configs/tiny.py", "--workdir",
                       str(tmp_path / "run"), override, timeout=120)
    assert_one_error_line(proc, message)
    assert not (tmp_path / "run").exists()


def test_a_misspelt_synthetic_root_is_refused_not_generated(trained_run, data_paths, tmp_path):
    raw, prepared = data_paths
    typo = raw.with_name(raw.name + "_typo")
    proc = run_command("dualattn.train", "--config", "configs/tiny.py", "--workdir",
                       str(tmp_path / "run"), f"--config.dataset.root={typo}",
                       f"--config.dataset.data_dir={prepared}")
    assert_one_error_line(proc, f"dataset.root {typo} does not exist, and {prepared} holds a "
                                f"dataset prepared from {raw}; fix dataset.root")
    assert not typo.exists()
