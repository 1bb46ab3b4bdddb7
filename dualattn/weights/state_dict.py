"""Our Flax model's variables as PyTorch state dicts and back (torch-free, NumPy).

``flax_to_torch`` gives a state dict that ``TorchReIDNet.load_state_dict(strict=True)``
accepts; ``torch_to_flax`` is its inverse and checks every key and shape. Names and layouts
come from ``dualattn.weights.names``.
"""

from __future__ import annotations

import numpy as np
from flax import nnx

from dualattn.errors import UserError
from dualattn.weights.names import to_flax_layout, to_torch_layout, torch_name


class ConversionError(UserError, ValueError):
    """The state dict does not fit the model; the message lists every offending key."""


def _bn_modules(names) -> set[str]:
    return {n.rsplit(".", 1)[0] for n in names if n.endswith(".running_mean")}


def state_to_torch(state: nnx.State) -> dict[str, np.ndarray]:
    """``name -> array`` in PyTorch names and layouts for every leaf of ``state`` (a model's
    variables, or gradients shaped like them)."""
    return {torch_name(path): to_torch_layout(path, np.asarray(var[...]))
            for path, var in nnx.to_flat_state(state)}


def flax_to_torch(model: nnx.Module) -> dict[str, np.ndarray]:
    """``name -> array`` in PyTorch layouts for every parameter and BN statistic of ``model``,
    plus what ``TorchReIDNet.load_state_dict(strict=True)`` expects beyond them."""
    out = state_to_torch(nnx.state(model))
    for bn in _bn_modules(out):
        out[f"{bn}.num_batches_tracked"] = np.zeros((), np.int64)
        if f"{bn}.bias" not in out:  # the BNNeck's bias: frozen at zero in BoT's layout
            out[f"{bn}.bias"] = np.zeros_like(out[f"{bn}.weight"])
    return out


def match_state_dict(state_dict: dict[str, np.ndarray], target: dict[tuple, nnx.Variable],
                     skip=lambda name: False) -> tuple[dict, list[str], list[str], set]:
    """Pair PyTorch names with the Flax variables in ``target`` (a flat state).

    Returns ``(updates, unexpected, shape_mismatches, seen)``: arrays in Flax layout by path,
    names with no variable, ``"name: file (..) vs model (..)"`` lines, and the paths the file
    named (whatever their shape). Names for which ``skip`` is true are ignored.
    """
    by_name = {torch_name(path): path for path in target}
    updates, unexpected, shapes, seen = {}, [], [], set()
    for name, value in state_dict.items():
        if skip(name):
            continue
        path = by_name.get(name)
        if path is None:
            unexpected.append(name)
            continue
        seen.add(path)
        value = to_flax_layout(path, np.asarray(value))
        if value.shape != target[path].shape:
            shapes.append(f"{name}: file {value.shape} vs model {target[path].shape}")
            continue
        updates[path] = value.astype(target[path].dtype)
    return updates, unexpected, shapes, seen


def assign(module: nnx.Module, state, updates: dict[tuple, np.ndarray]) -> None:
    """Write ``updates`` (path -> array) into ``state`` and push it into ``module``."""
    flat = dict(nnx.to_flat_state(state))
    for path, value in updates.items():
        flat[path][...] = value
    nnx.update(module, state)


def torch_to_flax(state_dict: dict[str, np.ndarray], model: nnx.Module) -> None:
    """Load a PyTorch-layout state dict into ``model`` in place; all keys must match."""
    state = nnx.state(model)
    flat = dict(nnx.to_flat_state(state))
    own = {torch_name(path) for path in flat}
    # BN counters, and the BNNeck bias that BoT's layout carries frozen at zero.
    ignored = {n for n in state_dict if n.endswith("num_batches_tracked")}
    ignored |= {f"{bn}.bias" for bn in _bn_modules(state_dict) if f"{bn}.bias" not in own}
    updates, unexpected, shapes, seen = match_state_dict(state_dict, flat, ignored.__contains__)
    problems = ([f"unexpected: {n}" for n in unexpected] + [f"shape: {s}" for s in shapes]
                + [f"missing: {torch_name(p)}" for p in flat if p not in seen])
    if problems:
        raise ConversionError(f"state dict does not fit the model ({len(problems)} problem(s)):\n  "
                              + "\n  ".join(problems))
    assign(model, state, updates)
