"""The resolved config a training run saved in its workdir (``WORKDIR/config.json``).

Every entry point given ``--workdir W`` without ``--config`` loads it as
``--config=configs/saved.py:W/config.json`` (``dualattn.cli``), so ``--config.KEY=VALUE``
overrides apply on top of it as on any config file. Keys are read over ``configs/common.py``'s
defaults, with JSON lists turned back into the tuples the defaults hold.
"""

import json
from pathlib import Path

import ml_collections

from configs import common

# Paths made absolute when saved, so that later commands can run from any folder.
PATH_KEYS = (("dataset", "root"), ("dataset", "data_dir"), ("pretrained",))


def _update(config: ml_collections.ConfigDict, saved: dict) -> None:
    for key, value in saved.items():
        current = config.get(key)
        if isinstance(current, ml_collections.ConfigDict) and isinstance(value, dict):
            _update(current, value)
        elif isinstance(current, tuple) and isinstance(value, list):
            config[key] = tuple(value)
        elif isinstance(current, float) and isinstance(value, int):
            config[key] = float(value)
        else:
            config[key] = value


class SavedConfigError(ValueError):
    """A run's config.json that cannot be read back."""


def get_config(path: str) -> ml_collections.ConfigDict:
    config = common.get_config()
    try:
        recorded = json.loads(Path(path).read_text())
        if not isinstance(recorded, dict):
            raise ValueError("not a JSON object")
        _update(config, recorded)
    except (OSError, ValueError, TypeError, AttributeError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise SavedConfigError(
            f"the run's saved config {path} cannot be read ({reason}); restore it, or pass "
            "--config=FILE with the config the run was trained with") from None
    return config


def to_json(config: ml_collections.ConfigDict) -> str:
    """``config`` resolved, with its dataset and weight paths made absolute, as the JSON text
    ``get_config`` reads back."""
    config = config.copy_and_resolve_references()
    for *parents, leaf in PATH_KEYS:
        node = config
        for p in parents:
            node = node[p]
        if node[leaf]:
            node[leaf] = str(Path(node[leaf]).expanduser().absolute())
    return config.to_json_best_effort(indent=2, sort_keys=False) + "\n"
