"""Network definitions: the SE-ResNet backbone, the attention modules and the ReID model."""

from dualattn.models.attention import SpatialSelfAttention, SqueezeExcitation
from dualattn.models.reid import ReIDNet, ReIDOutput, count_params
from dualattn.models.resnet import Bottleneck, ResNet

__all__ = ["Bottleneck", "ReIDNet", "ReIDOutput", "ResNet", "SpatialSelfAttention",
           "SqueezeExcitation", "count_params"]
