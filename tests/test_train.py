"""The main job end to end on the tiny config: it learns, checkpoints, resumes and evaluates."""

import functools
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from flax import nnx
from PIL import Image

from configs import saved, tiny
from data_pipeline.datasets import read_columns
from dualattn import checkpoint, embed, evaluate, metrics, train, visualize
from dualattn.data import load_data
from dualattn.evaluation import distance_matrix, eval_step
from dualattn.extractor import FeatureExtractor
from dualattn.interop.compare import build_pair
from dualattn.interop.convert import ConversionError, export_run, import_state_dict
from dualattn.interop.files import WeightsFileError, read_state_dict, write_safetensors
from dualattn.interop.torch_model import TorchReIDNet
from dualattn.models import ReIDNet
from dualattn.optim import learning_rate_schedule
from dualattn.state import create_train_state, load_model
from tests.helpers import (assert_one_error_line, read_rows, run_command, tiny_config,
                           torchvision_state_dict)


@pytest.mark.filterwarnings("ignore:Market-1501 counts")
@pytest.mark.parametrize("sampler", ["identity", "uniform"])
def test_trains_evaluates_checkpoints_and_resumes_exactly(sampler, data_paths, tmp_path):
    def config(epochs):
        c = tiny_config(data_paths, epochs=epochs)
        c.input.sampler = sampler
        return c

    straight = tmp_path / "straight"
    result = train.train_and_evaluate(config(4), straight)
    rows = read_rows(straight)
    train_rows = [r for r in rows if "loss" in r]
    eval_rows = [r for r in rows if "mAP" in r]
    assert len(eval_rows) == 4
    for key in ("step", "rank1", "rank5", "rank10", "mAP", "mINP"):
        assert key in eval_rows[-1]
    for key in ("loss", "cross_entropy", "triplet", "lr", "images_per_s"):
        assert key in train_rows[-1]
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator")
    acc = event_accumulator.EventAccumulator(str(straight / "tensorboard"),
                                             size_guidance={"images": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("eval/mAP")] == [r["step"] for r in eval_rows]
    figures = acc.Images("eval/ranked_lists")  # one ranked-list figure per evaluation
    assert [e.step for e in figures] == [r["step"] for r in eval_rows]
    c = config(4)
    cell_w = c.input.width + 2 * visualize.FRAME + visualize.CELL_PAD
    cell_h = c.input.height + 2 * visualize.FRAME + visualize.CELL_PAD + visualize.LABEL_H
    assert (figures[-1].width, figures[-1].height) == (
        11 * cell_w + visualize.QUERY_GAP, c.eval.ranked_list_queries * cell_h)
    assert b"optim.lr" in acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    assert acc.Scalars("train/loss")[-1].value == pytest.approx(train_rows[-1]["loss"], abs=1e-6)
    losses = [r["loss"] for r in train_rows]
    assert np.mean(losses[-4:]) < np.mean(losses[:4])  # it learns
    assert result == pytest.approx({k: eval_rows[-1][k] for k in result}, abs=1e-6)  # 6 decimals

    # Two epochs, stop, then two more in the same workdir: same parameters as straight through.
    resumed = tmp_path / "resumed"
    train.train_and_evaluate(config(2), resumed)
    train.train_and_evaluate(config(4), resumed)
    assert [r["step"] for r in read_rows(resumed) if "loss" in r] == [r["step"] for r in train_rows]

    def params(workdir):
        c = tiny_config(data_paths)
        data = load_data(c)
        _, target, _ = create_train_state(c, data.num_classes, data.sampler.steps_per_epoch)
        state, _ = checkpoint.Checkpointer(workdir / "checkpoints").restore_latest(target)
        return state

    for a, b in zip(jax.tree.leaves(params(straight)), jax.tree.leaves(params(resumed)),
                    strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings("ignore:Market-1501 counts")
def test_a_failed_evaluation_loses_no_training_and_is_redone_on_resume(data_paths, tmp_path,
                                                                      monkeypatch):
    c = tiny_config(data_paths, epochs=2)
    real = train.score_features
    calls = []

    def fails_the_second_time(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise MemoryError("out of memory while scoring")
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "score_features", fails_the_second_time)
    with pytest.raises(MemoryError):
        train.train_and_evaluate(c, tmp_path)
    monkeypatch.setattr(train, "score_features", real)
    ckpt = checkpoint.Checkpointer(tmp_path / "checkpoints")
    last = max(r["step"] for r in read_rows(tmp_path))
    assert ckpt.latest_step() == last  # the epoch's checkpoint was written before scoring
    assert [r["step"] for r in read_rows(tmp_path) if "mAP" in r] == [last // 2]
    result = train.train_and_evaluate(c, tmp_path)  # resumes: evaluates the last step first
    evals = [r for r in read_rows(tmp_path) if "mAP" in r]
    assert [r["step"] for r in evals] == [last // 2, last]
    assert result["mAP"] == pytest.approx(evals[-1]["mAP"], abs=1e-6)
    best = max(evals, key=lambda r: r["mAP"])
    assert checkpoint.Checkpointer(tmp_path / "checkpoints").best.latest_step() == best["step"]


@pytest.mark.filterwarnings("ignore:Market-1501 counts")
def test_checkpoint_of_another_model_is_refused_with_the_fix(data_paths, tmp_path):
    train.train_and_evaluate(tiny_config(data_paths, epochs=1), tmp_path)
    c = tiny_config(data_paths, epochs=2)
    c.model.use_sa = False
    with pytest.raises(checkpoint.CheckpointMismatchError, match="new --workdir"):
        train.train_and_evaluate(c, tmp_path)


@pytest.mark.parametrize("override,message", [
    ("--config.model.nonexistent=1", "unknown config key 'nonexistent'"),
    ("--config.optim.epoch=3", """unknown config key 'epoch' in --config.optim.epoch (did you """
                               """mean "epochs"?)"""),
    ("--config.model.width=abc", "invalid literal"),
    ("--config=configs/no_such_config.py", "cannot load the config file "
                                           "configs/no_such_config.py ([Errno 2]"),
])
def test_bad_overrides_give_one_clear_line(override, message, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "dualattn.train", "--config", "configs/tiny.py",
                           "--workdir", str(tmp_path / "run"), override],
                          capture_output=True, text=True, timeout=120)
    assert_one_error_line(proc, message)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("dtype", [np.int32, np.uint32])
def test_learning_rate_schedule_warms_up_and_steps_down(dtype):
    c = tiny.get_config()
    c.optim.lr, c.optim.warmup_epochs, c.optim.warmup_factor = 1e-3, 2, 0.01
    c.optim.decay_epochs, c.optim.decay_factor = (4, 6), 0.1
    c.optim.schedule = "per_step"
    schedule = learning_rate_schedule(c, steps_per_epoch=10)
    lr = lambda step: float(schedule(dtype(step)))  # noqa: E731
    # optax's linear schedule evaluates (init - end) * frac + end in f32: recovering 1e-5 from
    # 1e-3 costs ~6e-11 absolute, i.e. ~8e-6 relative.
    approx = functools.partial(pytest.approx, rel=2e-5)
    assert lr(0) == approx(1e-5)
    assert lr(10) == approx(1e-5 + (1e-3 - 1e-5) / 2)
    assert lr(20) == approx(1e-3) and lr(39) == approx(1e-3)
    assert lr(40) == approx(1e-4) and lr(60) == approx(1e-5)


def test_bot_schedule_is_reid_strong_baselines_per_epoch_rate():
    """WarmupMultiStepLR stepped at each epoch's start: epoch E (0-based) runs at t = E + 1."""
    c = tiny.get_config()
    c.optim.lr, c.optim.warmup_epochs, c.optim.warmup_factor = 3.5e-4, 10, 0.01
    c.optim.decay_epochs, c.optim.decay_factor, c.optim.schedule = (40, 70), 0.1, "bot"
    schedule = learning_rate_schedule(c, steps_per_epoch=7)
    approx = functools.partial(pytest.approx, rel=1e-5)
    for epoch, expected in [(0, 3.5e-4 * (0.01 * 0.9 + 0.1)), (8, 3.5e-4 * (0.01 * 0.1 + 0.9)),
                            (9, 3.5e-4), (38, 3.5e-4), (39, 3.5e-5), (68, 3.5e-5),
                            (69, 3.5e-6)]:
        for step in (7 * epoch, 7 * epoch + 6):  # constant within the epoch
            assert float(schedule(np.uint32(step))) == approx(expected), (epoch, step)
    assert float(schedule(0)) == approx(3.815e-5)


@pytest.mark.filterwarnings("ignore:Market-1501 counts")
def test_evaluate_scores_best_latest_and_untrained(trained_run, tmp_path):
    c, run = trained_run
    best_row = max((r for r in read_rows(run) if "mAP" in r), key=lambda r: r["mAP"])
    step, best = evaluate.evaluate_run(c, run, "best")
    assert step == best_row["step"] and best["mAP"] == pytest.approx(best_row["mAP"], abs=1e-6)
    step, _ = evaluate.evaluate_run(c, run, "latest")
    assert step == read_rows(run)[-1]["step"]
    step, untrained = evaluate.evaluate_run(c, run, "untrained")
    assert step == 0 and untrained["mAP"] != best["mAP"]
    table = evaluate.format_table([("best", 12, best)])
    assert "mAP" in table.splitlines()[0] and f"{100 * best['mAP']:.2f}%" in table
    assert 0 < best["valid_queries"] <= best["queries"]
    assert table.splitlines()[-1] == (f"{best['valid_queries']} of {best['queries']} queries "
                                      "have a valid match")
    for which in ("best", "latest"):
        with pytest.raises(checkpoint.CheckpointNotFoundError,
                           match=f"no {which} checkpoint under .*train the run first"):
            evaluate.evaluate_run(c, tmp_path / "empty", which)


@pytest.mark.filterwarnings("ignore:Market-1501 counts")
def test_inference_restores_the_model_alone_also_from_older_checkpoints(trained_run, tmp_path):
    """load_model reads the model's variables and not the optimizer's moments; a checkpoint
    whose metadata predates ``num_classes`` gets the class count from the classifier."""
    c, run = trained_run
    num_classes = checkpoint.Checkpointer(run / "checkpoints").stored_num_classes("latest")
    loaded = load_model(c, run, "latest")
    graphdef, state, _ = create_train_state(c, num_classes, 1, pretrained=False)
    model, _ = nnx.merge(graphdef, state)
    assert jax.tree.structure(loaded.state) == jax.tree.structure(nnx.state(model))

    older = checkpoint.Checkpointer(tmp_path / "checkpoints")
    older.save_latest(3, state, {"step": 3, "best_mAP": -1.0})  # no num_classes
    older.wait()
    assert older.stored_num_classes("latest") == num_classes
    assert load_model(c, tmp_path, "latest").step == 3


@pytest.mark.filterwarnings("ignore:Market-1501 counts")
def test_later_commands_need_only_the_workdir(trained_run):
    """The run saved its resolved config; evaluate reads it, scores the final model by default,
    labels the test-selected checkpoint, and refuses an override that changes the model."""
    c, run = trained_run
    again = saved.get_config(str(run / saved.FILENAME))
    expected = c.copy_and_resolve_references()
    expected.dataset.root = str(Path(c.dataset.root).absolute())
    expected.dataset.data_dir = str(Path(c.dataset.data_dir).absolute())
    assert again.to_dict() == expected.to_dict()

    proc = run_command("dualattn.evaluate", "--workdir", str(run))
    assert proc.returncode == 0, proc.stderr[-2000:]
    final = [r for r in read_rows(run) if "mAP" in r][-1]
    (line,) = [line for line in proc.stdout.splitlines() if line.startswith("final ")]
    assert line.split()[1] == str(final["step"]) and f"{100 * final['mAP']:.2f}%" in line
    proc = run_command("dualattn.evaluate", "--workdir", str(run), "--checkpoint=best")
    assert proc.returncode == 0 and "best (test-selected)" in proc.stdout, proc.stderr[-2000:]
    proc = run_command("dualattn.evaluate", "--workdir", str(run), "--config.model.use_sa=False")
    assert_one_error_line(proc, "does not match this model configuration")


@pytest.mark.filterwarnings("ignore:Market-1501 counts")
def test_compare_loads_a_runs_final_model_into_both_frameworks(trained_run):
    c, run = trained_run
    model, twin, how = build_pair(saved.get_config(str(run / saved.FILENAME)), 751,
                                  workdir=str(run))
    assert how.startswith(f"the final model of {run}")
    assert model.classifier.kernel.shape[-1] == checkpoint.Checkpointer(
        run / "checkpoints").stored_num_classes("latest")
    images = np.random.default_rng(0).standard_normal((2, 64, 32, 3)).astype(np.float32)
    with torch.no_grad():
        theirs = twin.eval()(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()
    np.testing.assert_allclose(model(images, train=False), theirs, rtol=1e-4,
                               atol=1e-4 * np.abs(theirs).max())


@pytest.mark.filterwarnings("ignore:Market-1501 counts")
def test_convert_round_trips_a_run_through_pytorch_files(trained_run, tmp_path):
    """Run -> .safetensors (loads strictly into the twin) -> new run: same evaluation; the
    classifier size comes from the files, so a 9-class model evaluates on this dataset too."""
    c, run = trained_run
    _, best = evaluate.evaluate_run(c, run, "best")
    export_run(c, run, tmp_path / "model.safetensors")
    state_dict = read_state_dict(tmp_path / "model.safetensors")
    twin = TorchReIDNet(state_dict["classifier.weight"].shape[0], **c.model.to_dict())
    twin.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()}, strict=True)

    import_state_dict(c, tmp_path / "model.safetensors", tmp_path / "imported")
    step, again = evaluate.evaluate_run(c, tmp_path / "imported", "best")
    assert step == 0 and again == pytest.approx(best, abs=1e-6)
    with pytest.raises(ConversionError, match="already holds checkpoints"):
        import_state_dict(c, tmp_path / "model.safetensors", tmp_path / "imported")

    state_dict["classifier.weight"] = np.zeros((9, state_dict["classifier.weight"].shape[1]),
                                               np.float32)
    write_safetensors(tmp_path / "nine.safetensors", state_dict)
    import_state_dict(c, tmp_path / "nine.safetensors", tmp_path / "nine")
    _, nine = evaluate.evaluate_run(c, tmp_path / "nine", "best")
    assert nine == pytest.approx(best, abs=1e-6)  # the test feature does not use the classifier
    del state_dict["classifier.weight"]
    write_safetensors(tmp_path / "backbone.safetensors", state_dict)
    with pytest.raises(ConversionError, match="--config.pretrained="):
        import_state_dict(c, tmp_path / "backbone.safetensors", tmp_path / "other")


@pytest.mark.filterwarnings("ignore:Market-1501 counts")
def test_pretrained_backbone_is_loaded_by_the_trainer(data_paths, tmp_path):
    sd = torchvision_state_dict()
    torch.save(sd, tmp_path / "r50.pth")
    c = tiny_config(data_paths)
    c.pretrained = str(tmp_path / "r50.pth")
    graphdef, state, _ = create_train_state(c, 6, 10)
    model, _ = nnx.merge(graphdef, state)
    np.testing.assert_array_equal(model.backbone.layer4[0].conv3.kernel[...],
                                  sd["layer4.0.conv3.weight"].numpy().transpose(2, 3, 1, 0))
    c.pretrained = str(tmp_path / "missing.pth")
    with pytest.raises(WeightsFileError, match="does not exist"):
        create_train_state(c, 6, 10)


@pytest.mark.filterwarnings("ignore:Market-1501 counts")
def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(
        data_paths, tmp_path):
    c = tiny_config(data_paths, epochs=1)
    train.train_and_evaluate(c, tmp_path)
    saved = checkpoint.Checkpointer(tmp_path / "checkpoints").latest_step()
    c = tiny_config(data_paths, epochs=2, lr=float("nan"))
    # Step saved+1 computes its loss from good parameters; its NaN-rate update poisons them, so
    # the loss first turns NaN at step saved+2.
    with pytest.raises(FloatingPointError, match=f"at step {saved + 2};"):
        train.train_and_evaluate(c, tmp_path)
    assert checkpoint.Checkpointer(tmp_path / "checkpoints").latest_step() == saved


def test_flip_and_feature_choices_do_what_they_say(tiny_model_kwargs):
    model = ReIDNet(5, **tiny_model_kwargs, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    images = np.random.default_rng(0).integers(0, 256, (4, 64, 32, 3), dtype=np.uint8)
    mirror = images[:, :, ::-1]

    def feats(x, **kw):
        return np.asarray(eval_step(graphdef, state, x, **kw))

    plain, flipped = feats(images), feats(images, flip=True)
    np.testing.assert_allclose(flipped, (plain + feats(mirror)) / 2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(feats(mirror, flip=True), flipped, rtol=1e-5, atol=1e-6)
    assert not np.allclose(plain, flipped)
    # "after" is the BNNeck applied to "before" with its running statistics.
    before, after = feats(images, feature="before"), feats(images, feature="after")
    bn = model.bottleneck
    expected = (before - bn.mean[...]) / np.sqrt(bn.var[...] + bn.epsilon) * bn.scale[...]
    np.testing.assert_allclose(after, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(after, plain)  # the config's default


@pytest.mark.filterwarnings("ignore:Market-1501 counts")
def test_evaluate_variants_table(trained_run):
    c, run = trained_run
    loaded = evaluate.load_run(c, run, "best")
    step, rows = loaded.step, evaluate.evaluate_variants(c, loaded)
    names = [name for name, _ in rows]
    assert names == ["after", "after +rerank", "after +flip", "after +flip +rerank", "before",
                     "before +rerank", "before +flip", "before +flip +rerank"]
    _, default = evaluate.evaluate_run(c, run, "best")
    assert dict(rows)["after"] == pytest.approx(default, abs=1e-6)
    assert c.eval.flip_test is False  # the caller's config is untouched
    assert len({round(m["mAP"], 6) for _, m in rows}) > 1
    table = evaluate.format_table([(f"best: {n}", step, m) for n, m in rows])
    assert "best: before +flip +rerank" in table


@pytest.mark.filterwarnings("ignore:Market-1501 counts")
def test_embed_a_folder_matches_evaluation_features(trained_run, data_paths, tmp_path):
    c, run = trained_run
    folder = data_paths[0] / "query"
    paths = embed.list_images(folder)
    feats = FeatureExtractor(run, checkpoint="best")(paths)
    assert feats.shape == (len(paths), 256) and feats.dtype == np.float32
    # The same images through the evaluation path (the prepared query split), matched by name.
    loaded = evaluate.load_run(c, run, "best")
    reference, _ = evaluate.run_features(c, loaded)
    (names,) = read_columns(loaded.data.sources["query"], "path")
    by_name = {Path(str(n.decode() if isinstance(n, bytes) else n)).name: f
               for n, f in zip(names, reference)}
    np.testing.assert_allclose(feats, np.stack([by_name[p.name] for p in paths]), atol=1e-5)

    # The command line: an .npz of features and paths, and a top-K search.
    out = tmp_path / "feats.npz"
    base = [sys.executable, "-m", "dualattn.embed", "--config", "configs/tiny.py",
            "--workdir", str(run)]
    proc = subprocess.run(base + ["--images", str(folder), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    saved = np.load(out)
    assert list(saved["paths"]) == [str(p.relative_to(folder)) for p in paths]
    np.testing.assert_allclose(saved["features"], feats, atol=1e-5)
    proc = subprocess.run(base + ["--query", str(paths[0]), "--gallery", str(folder),
                                  "--top", "3"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()[-3:]
    assert lines[0].split()[0] == "1" and lines[0].endswith(str(paths[0]))  # itself first
    assert float(lines[0].split()[1]) == pytest.approx(0, abs=1e-3)


def test_embed_refuses_undecodable_images_naming_them(tmp_path):
    Image.new("RGB", (32, 64)).save(tmp_path / "good.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(embed.EmbedError, match=r"(?s)1 image\(s\) cannot be decoded.*bad\.jpg"):
        embed.list_images(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(embed.EmbedError, match="no .jpg"):
        embed.list_images(tmp_path / "empty")


@pytest.mark.filterwarnings("ignore:Market-1501 counts")
def test_ranked_list_and_attention_figures(trained_run, tmp_path):
    c, run = trained_run
    h, w = c.input.height, c.input.width  # 64 x 32: thumbnails at input size
    loaded = evaluate.load_run(c, run, "best")
    out = evaluate.ranked_list_png(c, loaded, 3, tmp_path / "ranked.png")
    cell_w, cell_h = (w + 2 * visualize.FRAME + visualize.CELL_PAD,
                      h + 2 * visualize.FRAME + visualize.CELL_PAD + visualize.LABEL_H)
    with Image.open(out) as fig:
        assert fig.size == (11 * cell_w + visualize.QUERY_GAP, 3 * cell_h)
        pixels = np.asarray(fig.convert("RGB"))
    # Every retrieved image is framed green or red (the frame's top-left pixel), and captioned
    # (dark text in the line under it).
    for col in range(1, 11):
        x = visualize.QUERY_GAP + col * cell_w
        assert tuple(pixels[0, x]) in (visualize.GREEN, visualize.RED)
        caption = pixels[h + 2 * visualize.FRAME:cell_h - visualize.CELL_PAD, x:x + cell_w]
        assert (caption.max(axis=-1) < 100).any()
    # The AP under each query is the evaluator's for that query.
    q, g = evaluate.run_features(c, loaded)
    dist = distance_matrix(q[:1], g, c)
    (qp, qc), (gp, gc) = loaded.data.ids["query"], loaded.data.ids["gallery"]
    order = np.argsort(dist[0], kind="stable")
    order = order[~((gp[order] == qp[0]) & (gc[order] == qc[0]))]
    expected = metrics.evaluate(dist, qp[:1], gp, qc[:1], gc)["mAP"]
    assert visualize.average_precision(gp[order] == qp[0]) == pytest.approx(expected)
    out, gate = evaluate.attention_png(c, loaded, 4, tmp_path / "attention.png")
    model = nnx.merge(loaded.graphdef, loaded.state)
    assert gate == pytest.approx(float(model.attention.alpha[...])) and gate != 0  # it learned
    big_h = visualize.ATTENTION_H  # readable whatever the input size: 256 high, aspect kept
    big_w = round(w * big_h / h)
    scale_x = 4 * (2 * big_w + 2 * visualize.CELL_PAD)
    with Image.open(out) as fig:
        assert fig.size == (scale_x + visualize.SCALE_W + 40,
                            visualize.HEADER_H + big_h + visualize.CELL_PAD)
        pixels = np.asarray(fig.convert("RGB"))
    top, bottom = visualize.colormap(np.array([1.0, 0.0]))  # the scale runs most -> least
    np.testing.assert_array_equal(pixels[visualize.HEADER_H, scale_x], top)
    np.testing.assert_array_equal(pixels[visualize.HEADER_H + big_h - 1, scale_x], bottom)
    assert (pixels[:visualize.HEADER_H].max(axis=-1) < 100).any()  # the header line


def test_colormap_runs_cold_to_hot():
    cold, hot = visualize.colormap(np.array([0.0, 1.0]))
    assert cold[2] > cold[0] and hot[0] > hot[2]  # blue at 0, red at 1


def test_a_misspelt_synthetic_root_is_refused_not_generated(trained_run, data_paths, tmp_path):
    raw, prepared = data_paths
    typo = raw.with_name(raw.name + "_typo")
    proc = run_command("dualattn.train", "--config", "configs/tiny.py", "--workdir",
                       str(tmp_path / "run"), f"--config.dataset.root={typo}",
                       f"--config.dataset.data_dir={prepared}")
    assert_one_error_line(proc, f"dataset.root {typo} does not exist, and {prepared} holds a "
                                f"dataset prepared from {raw}; fix dataset.root")
    assert not typo.exists()
