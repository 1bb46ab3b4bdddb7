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
    (tmp_path / "model.safetensors").write_bytes(b"\x40\x00\x00\x00\x00\x00\x00\x00{\"w\"")
    proc = run_command("dualattn.interop.compare", "--config", "configs/tiny.py",
                       f"--weights={tmp_path / 'model.safetensors'}")
    assert_one_error_line(proc, "is not a complete .safetensors file")


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


def test_console_scripts_are_the_modules_commands():
    """``pip install`` puts a ``dualattn-*`` command beside each ``python -m`` entry point;
    each is that module's ``command``, and runs like it."""
    import shutil
    import subprocess
    from importlib.metadata import entry_points

    scripts = {e.name: e for e in entry_points(group="console_scripts")
               if e.name.startswith("dualattn-")}
    assert set(scripts) == {"dualattn-train", "dualattn-evaluate", "dualattn-embed",
                            "dualattn-convert", "dualattn-compare", "dualattn-export"}
    for name, entry in scripts.items():
        command = name.removeprefix("dualattn-")
        package = "dualattn.interop" if command in ("convert", "compare") else "dualattn"
        assert entry.value == f"{package}.{command}:command"
        assert callable(entry.load())
    proc = subprocess.run([shutil.which("dualattn-compare"), "--config", "configs/tiny.py",
                           "--config.model.dtype=float16"], capture_output=True, text=True,
                          timeout=300)
    assert_one_error_line(proc, "compare runs float32 or bfloat16")
