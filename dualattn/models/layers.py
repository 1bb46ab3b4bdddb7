"""Layer factories shared by the backbone, the attention modules and the head.

They fix the two conventions that make our numbers line up with PyTorch's: BatchNorm with
torch's defaults, and He-normal (fan-out) convolution initialisation as torchvision uses.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

# torch.nn.BatchNorm2d(momentum=0.1, eps=1e-5): Flax's momentum is the weight of the old value.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

# torchvision: nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu"), untruncated.
conv_kernel_init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


def batch_norm(features: int, *, dtype=jnp.float32, param_dtype=jnp.float32, use_bias=True,
               scale_init=nnx.initializers.ones, rngs: nnx.Rngs) -> nnx.BatchNorm:
    """BatchNorm over the channel (last) axis with torch's momentum and epsilon.

    Running statistics live in ``param_dtype`` (f32) whatever the compute ``dtype``; Flax
    reduces the batch statistics in f32 even for bf16 inputs.
    """
    return nnx.BatchNorm(features, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, dtype=dtype,
                         param_dtype=param_dtype, use_bias=use_bias, scale_init=scale_init,
                         rngs=rngs)
