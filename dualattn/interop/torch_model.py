"""The same network in PyTorch, for numerics comparison and for users' PyTorch tooling.

Same switches as ``dualattn.models.ReIDNet`` (``use_se``, ``use_sa``, ``bnneck``,
``last_stride``, ``test_feature``, stage sizes and width), NCHW, torchvision's ResNet parameter
names for the backbone and timm's for SE (1x1 convs ``se.fc1`` / ``se.fc2``), so torchvision
and timm checkpoints load with ``load_state_dict(..., strict=False)`` and our converted
weights with ``strict=True``. Train mode (``model.train()``) returns ``(features, logits)``,
eval mode the test feature, as the Flax model does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from dualattn.models.attention import reduced_channels
from dualattn.models.resnet import EXPANSION, RESNET50_STAGES


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = reduced_channels(channels, reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x):
        gate = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
        return x * gate


class Bottleneck(nn.Module):
    def __init__(self, in_channels: int, width: int, stride: int, use_se: bool,
                 se_reduction: int):
        super().__init__()
        out = width * EXPANSION
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.se = SqueezeExcitation(out, se_reduction) if use_se else None
        self.downsample = None
        if stride != 1 or in_channels != out:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out, 1, stride, bias=False),
                                            nn.BatchNorm2d(out))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        if self.se is not None:
            y = self.se(y)
        return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class SpatialSelfAttention(nn.Module):
    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        self.key_channels = reduced_channels(channels, reduction)
        self.query_conv = nn.Conv2d(channels, self.key_channels, 1, bias=False)
        self.query_bn = nn.BatchNorm2d(self.key_channels)
        self.key_conv = nn.Conv2d(channels, self.key_channels, 1, bias=False)
        self.key_bn = nn.BatchNorm2d(self.key_channels)
        self.value_conv = nn.Conv2d(channels, channels, 1, bias=False)
        self.value_bn = nn.BatchNorm2d(channels)
        self.alpha = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        b, c, h, w = x.shape
        q = self.query_bn(self.query_conv(x)).flatten(2).transpose(1, 2)  # (B, N, d)
        k = self.key_bn(self.key_conv(x)).flatten(2)  # (B, d, N)
        v = self.value_bn(self.value_conv(x)).flatten(2).transpose(1, 2)  # (B, N, C)
        attn = torch.softmax(q @ k / math.sqrt(self.key_channels), dim=-1)
        o = (attn @ v).transpose(1, 2).reshape(b, c, h, w)
        return self.alpha * o + x


class TorchReIDNet(nn.Module):
    def __init__(self, num_classes: int, *, stage_sizes: Sequence[int] = RESNET50_STAGES,
                 width: int = 64, last_stride: int = 1, use_se: bool = True,
                 se_reduction: int = 16, use_sa: bool = True, sa_reduction: int = 8,
                 bnneck: bool = True, test_feature: str = "after", **_ignored):
        super().__init__()
        self.test_feature = test_feature
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_channels = width
        for i, n in enumerate(stage_sizes):
            stage_width = width * 2**i
            blocks = []
            for j in range(n):
                stride = (1, 2, 2, last_stride)[i] if j == 0 else 1
                blocks.append(Bottleneck(in_channels, stage_width, stride, use_se, se_reduction))
                in_channels = stage_width * EXPANSION
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.feature_dim = in_channels
        self.attention = SpatialSelfAttention(in_channels, sa_reduction) if use_sa else None
        self.bottleneck = None
        if bnneck:  # BoT's BNNeck: the bias exists for checkpoint compatibility, frozen at 0
            self.bottleneck = nn.BatchNorm1d(in_channels)
            self.bottleneck.bias.requires_grad_(False)
        self.classifier = nn.Linear(in_channels, num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)

    def forward(self, x):
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = stage(x)
        if self.attention is not None:
            x = self.attention(x)
        pooled = x.mean((2, 3))
        neck = pooled if self.bottleneck is None else self.bottleneck(pooled)
        if self.training:
            return pooled, self.classifier(neck)
        return neck if self.test_feature == "after" else pooled


def twin_from_state_dict(state_dict: dict[str, np.ndarray], model_config: dict,
                         device: str = "cpu") -> TorchReIDNet:
    """The twin of ``model_config`` (a config's ``model`` section) carrying ``state_dict`` (our
    model converted by ``dualattn.weights.state_dict.flax_to_torch``), loaded strictly; the
    classifier size is the state dict's."""
    twin = TorchReIDNet(int(state_dict["classifier.weight"].shape[0]), **model_config)
    twin.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()},
                         strict=True)
    return twin.to(device)
