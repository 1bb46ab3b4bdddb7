"""The training loop end to end on the tiny config: it learns, logs, checkpoints, resumes,
evaluates each time from one distance matrix, and keeps its state safe when a step fails."""

import jax
import numpy as np
import pytest

from dualattn.evaluation import evaluator as evaluator_module
from dualattn.evaluation import figures, metrics, rerank
from dualattn.run.checkpoint import Checkpointer, CheckpointMismatchError
from dualattn.run.data import load_data
from dualattn.run.model import create_train_state
from dualattn.run.workdir import RunDir
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
    result = train_and_evaluate(config(4), straight)
    rows = read_rows(straight)
    train_rows = [r for r in rows if "loss" in r]
    eval_rows = [r for r in rows if "mAP" in r]
    assert len(eval_rows) == 4
    # One distance matrix per evaluation, though each also draws its ranked lists.
    assert distance_calls == {"metric": 4, "rerank": 0}
    for key in ("step", "rank1", "rank5", "rank10", "mAP", "mINP"):
        assert key in eval_rows[-1]
    for key in ("loss", *TERMS, "lr", "images_per_s"):
        assert key in train_rows[-1]
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator")
    acc = event_accumulator.EventAccumulator(str(straight / "tensorboard"),
                                             size_guidance={"images": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("eval/mAP")] == [r["step"] for r in eval_rows]
    ranked = acc.Images("eval/ranked_lists")  # one ranked-list figure per evaluation
    assert [e.step for e in ranked] == [r["step"] for r in eval_rows]
    c = config(4)
    cell_w = c.input.width + 2 * figures.FRAME + figures.CELL_PAD
    cell_h = c.input.height + 2 * figures.FRAME + figures.CELL_PAD + figures.LABEL_H
    assert (ranked[-1].width, ranked[-1].height) == (
        11 * cell_w + figures.QUERY_GAP, c.eval.ranked_list_queries * cell_h)
    assert b"optim.lr" in acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    assert acc.Scalars("train/loss")[-1].value == pytest.approx(train_rows[-1]["loss"], abs=1e-6)
    losses = [r["loss"] for r in train_rows]
    assert np.mean(losses[-4:]) < np.mean(losses[:4])  # it learns
    rates = result.rates()
    assert rates == pytest.approx({k: eval_rows[-1][k] for k in rates}, abs=1e-6)  # 6 decimals

    # Two epochs, stop, then two more in the same workdir: same parameters as straight through.
    resumed = tmp_path / "resumed"
    train_and_evaluate(config(2), resumed)
    train_and_evaluate(config(4), resumed)
    assert [r["step"] for r in read_rows(resumed) if "loss" in r] == [r["step"] for r in train_rows]

    def params(workdir):
        c = tiny_config(data_paths)
        data = load_data(c)
        target = create_train_state(c, data.num_classes, data.sampler.steps_per_epoch).state
        state, _ = Checkpointer(RunDir(workdir)).restore_latest(target)
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
    train_and_evaluate(tiny_config(data_paths, epochs=1), tmp_path)
    c = tiny_config(data_paths, epochs=2)
    c.model.use_sa = False
    with pytest.raises(CheckpointMismatchError, match="new --workdir"):
        train_and_evaluate(c, tmp_path)


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(
        data_paths, tmp_path):
    c = tiny_config(data_paths, epochs=1)
    train_and_evaluate(c, tmp_path)
    run = RunDir(tmp_path)
    saved = run.checkpoint_steps("latest")[-1]
    c = tiny_config(data_paths, epochs=2, lr=float("nan"))
    # Step saved+1 computes its loss from good parameters; its NaN-rate update poisons them, so
    # the loss first turns NaN at step saved+2.
    with pytest.raises(FloatingPointError, match=f"at step {saved + 2};"):
        train_and_evaluate(c, tmp_path)
    assert run.checkpoint_steps("latest")[-1] == saved


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
