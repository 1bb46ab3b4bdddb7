"""One mapping between our Flax parameter paths and PyTorch state-dict names and layouts.

The PyTorch side uses torchvision's ResNet names for the backbone (``conv1``, ``bn1``,
``layer3.0.downsample.1.running_var``...) and timm's for SE (``layer1.0.se.fc1``, 1x1 convs),
so torchvision and timm checkpoints load directly; the rest (``attention.*``,
``bottleneck.*``, ``classifier.*``) follows our module names. The backbone has no ``backbone.``
prefix in torch, as in torchvision.

Layouts: conv kernels HWIO <-> OIHW; linear kernels (in, out) <-> weight (out, in); SE 1x1
convs (in, out) <-> (out, in, 1, 1); BatchNorm scale/bias/mean/var <->
weight/bias/running_mean/running_var (running_var is copied as is in both directions).
"""

from __future__ import annotations

import numpy as np

# timm's legacy SE-ResNets (Cadene's names, also BoT's se_resnet50): the stem inside ``layer0``,
# SE blocks as ``se_module`` and the classifier as ``last_linear``.
_LEGACY_SENET = (("layer0.conv1.", "conv1."), ("layer0.bn1.", "bn1."), (".se_module.", ".se."),
                 ("last_linear.", "fc."))

_BN = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
_CONVS = ("conv1", "conv2", "conv3", "downsample_conv", "query_conv", "key_conv", "value_conv")
_BNS = ("bn1", "bn2", "bn3", "downsample_bn", "query_bn", "key_bn", "value_bn", "bottleneck")


def torch_name(path: tuple) -> str:
    """PyTorch state-dict name of the Flax variable at ``path`` (as nnx.to_flat_state gives)."""
    parts = [str(p) for p in path]
    if parts[0] == "backbone":
        parts = parts[1:]
    module, leaf = parts[-2], parts[-1]
    if module == "downsample_conv":
        parts[-2] = "downsample.0"
    elif module == "downsample_bn":
        parts[-2] = "downsample.1"
    if module in _BNS:
        parts[-1] = _BN[leaf]
    elif leaf == "kernel":
        parts[-1] = "weight"
    return ".".join(parts)


def _kind(path: tuple) -> str:
    module, leaf = str(path[-2]), str(path[-1])
    if leaf != "kernel":
        return "as_is"
    if module in _CONVS:
        return "conv"
    if "se" in path:
        return "se"
    return "linear"


def to_torch_layout(path: tuple, value: np.ndarray) -> np.ndarray:
    kind = _kind(path)
    if kind == "conv":
        return np.ascontiguousarray(value.transpose(3, 2, 0, 1))
    if kind == "se":
        return np.ascontiguousarray(value.T[:, :, None, None])
    if kind == "linear":
        return np.ascontiguousarray(value.T)
    return value


def to_flax_layout(path: tuple, value: np.ndarray) -> np.ndarray:
    kind = _kind(path)
    if kind == "conv":
        return value.transpose(2, 3, 1, 0)
    if kind == "se":
        return value.reshape(value.shape[0], value.shape[1]).T
    if kind == "linear":
        return value.T
    return value


def canonical_names(state_dict: dict) -> tuple[dict, bool]:
    """``(state_dict in torchvision/timm names, whether it used legacy SE-ResNet names)``."""
    if not any(name.startswith("layer0.") for name in state_dict):
        return state_dict, False
    renamed = {}
    for name, value in state_dict.items():
        for old, new in _LEGACY_SENET:
            if name.startswith(old) or (old.startswith(".") and old in name):
                name = name.replace(old, new, 1)
        renamed[name] = value
    return renamed, True
