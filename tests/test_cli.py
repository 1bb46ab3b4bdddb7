"""Every entry point answers a bad input with one ``error:`` line and no traceback. The cases
fail before any training or compilation, so each costs one interpreter start."""

import pytest

from tests.helpers import assert_one_error_line, run_command


def test_train_refuses_a_missing_dataset(tmp_path):
    proc = run_command("dualattn.train", "--config", "configs/tiny.py", "--workdir",
                       str(tmp_path / "run"), f"--config.dataset.root={tmp_path / 'none'}",
                       f"--config.dataset.data_dir={tmp_path / 'tfds'}",
                       "--config.dataset.synthetic=False")
    assert_one_error_line(proc, "does not exist")


def test_evaluate_refuses_a_workdir_without_checkpoints(tmp_path):
    proc = run_command("dualattn.evaluate", "--config", "configs/tiny.py", "--workdir",
                       str(tmp_path / "empty"))
    assert_one_error_line(proc, "no latest checkpoint under")


@pytest.mark.parametrize("args,message", [
    (["--images", "."], "give either --images DIR --out FILE"),
    (["--images", "no_such_folder", "--out", "f.npz"], "is not a folder of images"),
])
def test_embed_refuses_incomplete_or_wrong_inputs(args, message, tmp_path):
    proc = run_command("dualattn.embed", "--config", "configs/tiny.py", "--workdir",
                       str(tmp_path), *args)
    assert_one_error_line(proc, message)


def test_compare_refuses_a_file_that_is_not_weights(tmp_path):
    (tmp_path / "model.pth").write_text("not weights")
    proc = run_command("dualattn.interop.compare", "--config", "configs/tiny.py",
                       f"--weights={tmp_path / 'model.pth'}")
    assert_one_error_line(proc, "not in torch's zip format")


@pytest.mark.parametrize("args,message", [
    (["notes.txt", "out"], "is neither a run's workdir nor a"),
    (["."], "give IN and OUT"),
])
def test_convert_refuses_what_it_cannot_convert(args, message):
    proc = run_command("dualattn.interop.convert", "--config", "configs/tiny.py", *args)
    assert_one_error_line(proc, message)


def test_an_unexpected_argument_is_one_line(tmp_path):
    proc = run_command("dualattn.evaluate", "--config", "configs/tiny.py", "--workdir",
                       str(tmp_path), "stray")
    assert_one_error_line(proc, "unexpected arguments ['stray']")
