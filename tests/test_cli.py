"""The command line every entry point shares: one ``error:`` line and no traceback for a bad
input, and a console script beside each ``python -m dualattn.<command>``. The cases fail
before any training or compilation, so each costs one interpreter start; each command's own
refusals are tested beside the command."""


from tests.helpers import assert_one_error_line, run_command


def test_train_refuses_a_missing_dataset(tmp_path):
    proc = run_command("dualattn.train", "--config", "configs/tiny.py", "--workdir",
                       str(tmp_path / "run"), f"--config.dataset.root={tmp_path / 'none'}",
                       f"--config.dataset.data_dir={tmp_path / 'tfds'}",
                       "--config.dataset.synthetic=False")
    assert_one_error_line(proc, "does not exist")


def test_compare_refuses_a_file_that_is_not_weights(tmp_path):
    (tmp_path / "model.pth").write_text("not weights")
    proc = run_command("dualattn.compare", "--config", "configs/tiny.py",
                       f"--weights={tmp_path / 'model.pth'}")
    assert_one_error_line(proc, "not in torch's zip format")
    (tmp_path / "model.safetensors").write_bytes(b"\x40\x00\x00\x00\x00\x00\x00\x00{\"w\"")
    proc = run_command("dualattn.compare", "--config", "configs/tiny.py",
                       f"--weights={tmp_path / 'model.safetensors'}")
    assert_one_error_line(proc, "is not a complete .safetensors file")


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
        assert entry.value == f"dualattn.{command}:command"
        assert callable(entry.load())
    proc = subprocess.run([shutil.which("dualattn-compare"), "--config", "configs/tiny.py",
                           "--config.model.dtype=float16"], capture_output=True, text=True,
                          timeout=300)
    assert_one_error_line(proc, "compare runs float32 or bfloat16")
