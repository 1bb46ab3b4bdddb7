"""The command line every entry point shares: one ``error:`` line and no traceback for a bad
input, and a console script beside each ``python -m dualattn.<command>``. The cases fail
before any training or compilation, so each costs one interpreter start; each command's own
refusals are tested beside the command."""


import pytest

from tests.helpers import assert_one_error_line, run_command


def test_train_refuses_a_missing_dataset(tmp_path):
    proc = run_command("dualattn.train", "--config", "configs/tiny.py", "--workdir",
                       str(tmp_path / "run"), f"--config.dataset.root={tmp_path / 'none'}",
                       f"--config.dataset.data_dir={tmp_path / 'tfds'}",
                       "--config.dataset.synthetic=False")
    assert_one_error_line(proc, "does not exist")


@pytest.mark.parametrize("source,message", [
    ("def get_config(:\n", "line 1 does not load (SyntaxError: invalid syntax)"),
    ("import no_such_module\n", "line 1 does not load (ModuleNotFoundError: No module named "
                                "'no_such_module')"),
])
def test_a_config_file_that_does_not_load_is_one_line(source, message, tmp_path):
    (tmp_path / "mine.py").write_text(source)
    proc = run_command("dualattn.train", "--config", str(tmp_path / "mine.py"), "--workdir",
                       str(tmp_path / "run"))
    assert_one_error_line(proc, f"the config file {tmp_path / 'mine.py'}, {message}; fix it")
    assert not (tmp_path / "run").exists()


def test_a_damaged_saved_config_is_one_line(tmp_path):
    (tmp_path / "config.json").write_text('{"optim": {"lr": ')  # cut short
    proc = run_command("dualattn.evaluate", "--workdir", str(tmp_path))
    assert_one_error_line(proc, f"the run's saved config {tmp_path / 'config.json'} cannot be "
                                "read (Expecting value")


def test_a_second_trainer_is_one_line(tmp_path):
    from dualattn.run.workdir import RunDir

    run = RunDir(tmp_path / "run")
    run.prepare()
    with run.exclusive():
        proc = run_command("dualattn.train", "--config", "configs/tiny.py", "--workdir",
                           str(run.path))
    assert_one_error_line(proc, f"--workdir {run.path} is in use by another trainer (pid ")
    assert sorted(p.name for p in run.path.iterdir()) == []  # nothing written, lock released


def test_compare_refuses_a_file_that_is_not_weights(tmp_path):
    (tmp_path / "model.pth").write_text("not weights")
    proc = run_command("dualattn.compare", "--config", "configs/tiny.py",
                       f"--weights={tmp_path / 'model.pth'}")
    assert_one_error_line(proc, "not in torch's zip format")
    (tmp_path / "model.safetensors").write_bytes(b"\x40\x00\x00\x00\x00\x00\x00\x00{\"w\"")
    proc = run_command("dualattn.compare", "--config", "configs/tiny.py",
                       f"--weights={tmp_path / 'model.safetensors'}")
    assert_one_error_line(proc, "is not a complete .safetensors file")


@pytest.mark.parametrize("train", [False, True])
def test_compare_checks_the_config_before_any_work(train):
    proc = run_command("dualattn.compare", "--config", "configs/tiny.py",
                       "--config.model.conv_init=xavier", *(["--train"] if train else []))
    assert_one_error_line(proc, "model.conv_init='xavier': one of")


def test_console_scripts_are_the_modules_commands():
    """``pip install`` puts a ``dualattn-*`` command beside each ``python -m`` entry point;
    each is that module's ``command``, and runs like it."""
    import shutil
    import subprocess
    from importlib.metadata import entry_points

    scripts = {e.name: e for e in entry_points(group="console_scripts")
               if e.name.startswith("dualattn-")}
    assert set(scripts) == {"dualattn-train", "dualattn-evaluate", "dualattn-embed",
                            "dualattn-convert", "dualattn-compare", "dualattn-export",
                            "dualattn-plan"}
    for name, entry in scripts.items():
        command = name.removeprefix("dualattn-")
        assert entry.value == f"dualattn.{command}:command"
        assert callable(entry.load())
    proc = subprocess.run([shutil.which("dualattn-compare"), "--config", "configs/tiny.py",
                           "--config.model.dtype=float16"], capture_output=True, text=True,
                          timeout=300)
    assert_one_error_line(proc, "compare runs float32 or bfloat16")
