"""A run's record stays true: only its length, logging and evaluation options may change when
it is resumed; any other setting, or fewer epochs than it trained, is refused by name."""

import pytest

from configs import saved, tiny
from dualattn.run.record import MAY_CHANGE, RunRecordError, check_resume, differences


def recorded():
    return saved.to_json(tiny.get_config())


def test_allowed_changes_are_returned_to_be_reported():
    c = tiny.get_config()
    c.optim.epochs, c.eval.rerank, c.log_every_steps = 5, True, 7
    changed = check_resume(recorded(), c, trained_steps=24, steps_per_epoch=12, workdir="W")
    assert changed == {"eval.rerank": (False, True), "log_every_steps": (1, 7),
                       "optim.epochs": (2, 5)}
    assert "optim.epochs" in MAY_CHANGE and "eval" in MAY_CHANGE


@pytest.mark.parametrize("key,value", [("optim.lr", 0.5), ("dataset.root", "/elsewhere"),
                                       ("model.use_sa", False), ("seed", 3),
                                       ("loss.weights.triplet", 0.0), ("pretrained", "/r50.pth")])
def test_a_change_that_makes_it_another_run_is_refused_by_name(key, value):
    c = tiny.get_config()
    *parents, leaf = key.split(".")
    node = c
    for part in parents:
        node = node[part]
    node[leaf] = value
    with pytest.raises(RunRecordError, match=rf"^W holds a run trained with other settings "
                                             rf"\({key}: .* in the run, .* now\); resume it with "
                                             rf"its own .* or train the new settings in a new "
                                             rf"--workdir"):
        check_resume(recorded(), c, trained_steps=12, steps_per_epoch=12, workdir="W")


def test_fewer_epochs_than_trained_are_refused():
    c = tiny.get_config()
    c.optim.epochs = 1
    with pytest.raises(RunRecordError, match=r"has trained 24 steps \(2 epochs\), more than "
                                             r"--config.optim.epochs=1 asks for"):
        check_resume(recorded(), c, trained_steps=24, steps_per_epoch=12, workdir="W")
    c.optim.epochs = 2
    assert check_resume(recorded(), c, trained_steps=24, steps_per_epoch=12, workdir="W") == {}


def test_relative_and_absolute_paths_are_the_same_setting(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    c = tiny.get_config()
    c.dataset.root = "data/here"
    text = saved.to_json(c)
    c.dataset.root = str(tmp_path / "data" / "here")
    assert differences(text, c) == {}
