"""ImageNet weights for the backbone from the files users have: torchvision/timm ``.pth`` or
``.safetensors`` (read by ``dualattn.weights.files``, without torch and without executing
pickled code).

torchvision's ResNet-50 names (which timm's resnet50 shares) map onto our backbone; SE blocks
load too when the file has them under timm's ``layerX.Y.se.fc1/fc2`` (``seresnet50``) or
``layerX.Y.se_module.fc1/fc2`` (``legacy_seresnet50``, Cadene's names, as BoT's se_resnet50),
else they start fresh, as do the self-attention module and the head.

A legacy SE-ResNet is Caffe-style: its bottlenecks stride in the first 1x1 conv rather than
the 3x3 one, and its stem pools with ceil_mode and no padding. The weights fit our
(torchvision-style) backbone tensor for tensor, but the function differs, so they are a good
initialisation for fine-tuning rather than the same network; the loader says so.
"""

from __future__ import annotations

from pathlib import Path

from flax import nnx

from dualattn.weights.files import WeightsFileError, read_state_dict
from dualattn.weights.names import canonical_names
from dualattn.weights.state_dict import assign, match_state_dict


def load_backbone_weights(model: nnx.Module, path: str | Path) -> dict[str, int]:
    """Copy a torchvision/timm ResNet-50 state dict into ``model.backbone`` in place.

    Every backbone parameter and BN statistic must be in the file except the SE layers
    (fresh if absent); a missing, unexpected or misshapen key is an error listing them all.
    Returns counts of loaded tensors and of fresh SE tensors, and whether the file used legacy
    (Caffe-style) SE-ResNet names.
    """
    source, legacy = canonical_names(read_state_dict(path))
    state = nnx.state(model.backbone)
    target = dict(nnx.to_flat_state(state))
    # The ImageNet classifier and BN counters are not part of our backbone.
    updates, unexpected, shapes, seen = match_state_dict(
        source, target, lambda n: n.startswith("fc.") or n.endswith("num_batches_tracked"))
    missing = [".".join(map(str, k)) for k in target if k not in seen and "se" not in k]
    problems = ([f"missing from the file: {m}" for m in missing]
                + [f"not in the backbone: {u}" for u in unexpected]
                + [f"shape mismatch: {s}" for s in shapes])
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise WeightsFileError(
            f"{path} does not fit this backbone ({len(problems)} problem(s)); it must be a "
            f"torchvision/timm ResNet with model.stage_sizes and model.width matching the file "
            f"(ResNet-50: (3, 4, 6, 3) and 64):\n  {shown}{more}")
    assign(model.backbone, state, updates)
    fresh_se = sum(1 for k in target if "se" in k and k not in updates)
    return {"loaded": len(updates), "fresh_se": fresh_se, "legacy_senet": legacy}
