"""A run's workdir: its files by name, writes that never leave a half-written file, output
paths checked before work, and one trainer at a time."""

import json
import os

import pytest

from dualattn.run.workdir import (
    OutputPathError,
    RunDir,
    WorkdirInUseError,
    atomic_output,
    atomic_write,
    check_output_file,
    check_output_folder,
)


def test_an_interrupted_write_leaves_the_old_file_and_no_temporary(tmp_path):
    out = atomic_write(tmp_path / "report.html", "first")
    with pytest.raises(RuntimeError, match="disk full"), atomic_output(out) as tmp:
        tmp.write_text("half of the sec")
        raise RuntimeError("disk full")
    assert out.read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]
    with atomic_output(tmp_path / "feats.npz", suffix=".npz") as tmp:
        assert tmp.name.endswith(".npz") and tmp.parent == tmp_path
        tmp.write_bytes(b"x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["feats.npz", "report.html"]


def test_output_paths_are_checked_before_any_work(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "a_file").write_text("")
    with pytest.raises(OutputPathError, match="--out .*folder is a folder; name a file"):
        check_output_file(tmp_path / "folder", "--out")
    with pytest.raises(OutputPathError, match=r"--out .*m\.onnx: folder .*no does not exist"):
        check_output_file(tmp_path / "no" / "m.onnx", "--out")
    with pytest.raises(OutputPathError, match="--out .*a_file/m.onnx: folder .*a_file does"):
        check_output_file(tmp_path / "a_file" / "m.onnx", "--out")
    assert check_output_file(tmp_path / "m.onnx", "--out") == tmp_path / "m.onnx"
    with pytest.raises(OutputPathError, match="--figures_dir .*a_file is not a folder"):
        check_output_folder(tmp_path / "a_file", "--figures_dir")
    assert check_output_folder(tmp_path / "new" / "figs", "--figures_dir").is_dir()
    with pytest.raises(OutputPathError, match="is a folder"), atomic_output(tmp_path / "folder"):
        pass


def test_one_trainer_holds_the_workdir_and_a_dead_ones_lock_is_taken_over(tmp_path):
    run = RunDir(tmp_path)
    with run.exclusive():
        holder = json.loads(run.lock.read_text())
        assert holder["pid"] == os.getpid() and holder["host"]
        with pytest.raises(WorkdirInUseError, match=rf"in use by another trainer \(pid "
                                                    rf"{os.getpid()} on .*choose another"):
            with run.exclusive():
                pass
    assert not run.lock.exists()  # released at exit
    # A trainer killed with SIGKILL leaves its file, but the kernel has dropped its lock.
    run.lock.write_text(json.dumps({"pid": 999999, "host": "gone", "started": "then"}))
    with run.exclusive():
        assert json.loads(run.lock.read_text())["pid"] == os.getpid()


def test_rows_and_checkpoint_steps_are_read_from_the_files(tmp_path):
    run = RunDir(tmp_path)
    for step in (1, 2, 3):
        run.append_row({"step": step, "loss": 1.0 / step})
    run.append_row({"step": 3, "mAP": 0.5})
    with run.metrics.open("a") as f:
        f.write('{"step": 4, "lo')  # torn by a kill mid-write
    assert [r["step"] for r in run.rows()] == [1, 2, 3, 3]
    assert run.logged_evaluations() == {3: 0.5}
    run.truncate_rows_after(2)
    assert [r["step"] for r in run.rows()] == [1, 2]
    for name in ("12", "24", "24.damaged", "36.orbax-checkpoint-tmp"):
        (run.checkpoint_dir("latest") / name).mkdir(parents=True)
    assert run.checkpoint_steps("latest") == [12, 24] and run.checkpoint_steps("best") == []
