"""The network only, plain Flax NNX, no I/O: the SE-ResNet backbone, the attention modules,
the ReID model, its input normalisation, and the XLA:CPU 1x1 convolution (``cpu_conv``)."""

from dualattn.models.attention import SpatialSelfAttention, SqueezeExcitation
from dualattn.models.reid import ReIDNet, ReIDOutput, count_params
from dualattn.models.resnet import Bottleneck, ResNet

__all__ = ["Bottleneck", "ReIDNet", "ReIDOutput", "ResNet", "SpatialSelfAttention",
           "SqueezeExcitation", "count_params"]
