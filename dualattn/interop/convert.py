"""Weight conversion between our Flax model and PyTorch state dicts (torch-free, NumPy).

``flax_to_torch`` gives a state dict that ``TorchReIDNet.load_state_dict(strict=True)``
accepts; ``torch_to_flax`` is its inverse and checks every key and shape. Names and layouts
come from ``dualattn.interop.names``.
"""

from __future__ import annotations

import numpy as np
from flax import nnx

from dualattn.interop.names import to_flax_layout, to_torch_layout, torch_name


class ConversionError(ValueError):
    """The state dict does not fit the model; the message lists every offending key."""


def _bn_modules(names) -> set[str]:
    return {n.rsplit(".", 1)[0] for n in names if n.endswith(".running_mean")}


def flax_to_torch(model: nnx.Module) -> dict[str, np.ndarray]:
    """``name -> array`` in PyTorch layouts for every parameter and BN statistic of ``model``."""
    out = {}
    for path, var in nnx.to_flat_state(nnx.state(model)):
        out[torch_name(path)] = to_torch_layout(path, np.asarray(var[...]))
    for bn in _bn_modules(out):
        out[f"{bn}.num_batches_tracked"] = np.zeros((), np.int64)
        if f"{bn}.bias" not in out:  # the BNNeck's bias: frozen at zero in BoT's layout
            out[f"{bn}.bias"] = np.zeros_like(out[f"{bn}.weight"])
    return out


def torch_to_flax(state_dict: dict[str, np.ndarray], model: nnx.Module) -> None:
    """Load a PyTorch-layout state dict into ``model`` in place; all keys must match."""
    state = nnx.state(model)
    flat = dict(nnx.to_flat_state(state))
    by_name = {torch_name(path): path for path in flat}
    ignored = {n for n in state_dict if n.endswith("num_batches_tracked")}
    ignored |= {f"{bn}.bias" for bn in _bn_modules(state_dict) if f"{bn}.bias" not in by_name}
    problems, updates = [], {}
    for name, value in state_dict.items():
        if name in ignored:
            continue
        if name not in by_name:
            problems.append(f"unexpected: {name}")
            continue
        path = by_name[name]
        value = to_flax_layout(path, np.asarray(value))
        if value.shape != flat[path].shape:
            problems.append(f"shape: {name} {value.shape} vs model {flat[path].shape}")
            continue
        updates[path] = value
    problems += [f"missing: {n}" for n, p in by_name.items() if p not in updates
                 and not any(s.startswith(f"shape: {n} ") for s in problems)]
    if problems:
        raise ConversionError(f"state dict does not fit the model ({len(problems)} problem(s)):\n  "
                              + "\n  ".join(problems))
    for path, value in updates.items():
        flat[path][...] = value.astype(flat[path].dtype)
    nnx.update(model, state)
