"""A run's record stays true: which settings may change when a run is resumed, and the check
that refuses every other change before any work is done.

A workdir's ``config.json`` and checkpoints describe one run: its data, model and recipe.
Resuming with another value of any of those would train a different run under the old
record (or, for a finished run, rewrite the record without training at all). What may differ
is how long the run goes on, what it logs and how it is evaluated: ``MAY_CHANGE``.
"""

from __future__ import annotations

import json

from configs import saved
from dualattn.errors import UserError

# Keys (or whole sections) whose values may differ between a run's config.json and the
# config it is resumed with: its length, its logging, its evaluation options, and where
# data is read and decoded from (the prepared dataset's identity is checked apart, by its
# fingerprint).
MAY_CHANGE = ("optim.epochs", "log_every_steps", "checkpoint_every_epochs", "eval",
              "input.num_workers", "input.eval_batch_size", "dataset.data_dir")


class RunRecordError(UserError, ValueError):
    """The config or data given to resume a run are not the ones the run was trained with."""


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat(value, f"{name}."))
        else:
            out[name] = value
    return out


def _may_change(key: str) -> bool:
    return any(key == k or key.startswith(f"{k}.") for k in MAY_CHANGE)


def differences(recorded: str, config) -> dict[str, tuple]:
    """``key -> (recorded value, new value)`` for every setting where ``config`` differs from
    a saved ``config.json`` text (both as ``configs.saved.to_json`` writes them: resolved,
    with absolute paths)."""
    old, new = _flat(json.loads(recorded)), _flat(json.loads(saved.to_json(config)))
    missing = "(not set)"
    return {k: (old.get(k, missing), new.get(k, missing)) for k in sorted(old.keys() | new.keys())
            if old.get(k, missing) != new.get(k, missing)}


def check_settings(recorded: str, config, workdir) -> dict[str, tuple]:
    """Refuse to resume a run whose saved config text is ``recorded`` with ``config`` if a
    setting outside ``MAY_CHANGE`` differs; returns the allowed differences. Checked before
    any data is read."""
    changed = differences(recorded, config)
    refused = {k: v for k, v in changed.items() if not _may_change(k)}
    if refused:
        listed = "; ".join(f"{k}: {old!r} in the run, {new!r} now"
                           for k, (old, new) in list(refused.items())[:8])
        more = f" (and {len(refused) - 8} more)" if len(refused) > 8 else ""
        raise RunRecordError(
            f"{workdir} holds a run trained with other settings ({listed}{more}); resume it "
            "with its own (leave these flags out: its config.json is used), or train the new "
            "settings in a new --workdir. Only the length, logging and evaluation options may "
            f"change on resume: {', '.join(MAY_CHANGE)}")
    return changed


def check_length(config, trained_steps: int, steps_per_epoch: int, workdir) -> None:
    """Refuse a resume that asks for fewer epochs than the run has trained."""
    epochs = config.optim.epochs
    if epochs * steps_per_epoch < trained_steps:
        raise RunRecordError(
            f"{workdir} has trained {trained_steps} steps ({trained_steps / steps_per_epoch:g} "
            f"epochs), more than --config.optim.epochs={epochs} asks for; score it as it is "
            "(python -m dualattn.evaluate --workdir ...), resume with at least that many "
            "epochs, or train in a new --workdir")


def check_resume(recorded: str, config, trained_steps: int, steps_per_epoch: int,
                 workdir) -> dict[str, tuple]:
    """``check_settings`` and ``check_length`` together."""
    changed = check_settings(recorded, config, workdir)
    check_length(config, trained_steps, steps_per_epoch, workdir)
    return changed
