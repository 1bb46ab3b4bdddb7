"""Layer factories shared by the backbone, the attention modules and the head.

They fix the conventions that make our numbers line up with PyTorch's: BatchNorm with torch's
momentum and epsilon, He-normal (fan-out) convolution initialisation as torchvision uses, and
explicit symmetric padding (Flax's ``'SAME'`` pads strided 7x7 and 3x3 windows
asymmetrically, torch pads symmetrically). Everything here is plain Flax, using its own hooks
(``dualattn.models.mixed_precision`` when computing in a narrower dtype than the parameters).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from dualattn.models import mixed_precision

# torch.nn.BatchNorm2d(momentum=0.1, eps=1e-5): Flax's momentum is the weight of the old value.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

# torchvision: nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu"), untruncated.
conv_kernel_init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")
# The convolution initialisations by ``model.conv_init``: torchvision's ResNet (the default), or
# PyTorch's own nn.Conv2d default, kaiming_uniform_(a=sqrt(5)): U(-b, b) with b = 1/sqrt(fan_in),
# what a network built from plain torch layers starts from. The choice matters when training
# from scratch; ImageNet weights replace every backbone convolution.
CONV_INITS = {
    "he_fan_out": conv_kernel_init,
    "torch_default": nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"),
}


def batch_norm(features: int, *, dtype=jnp.float32, param_dtype=jnp.float32, use_bias=True,
               rngs: nnx.Rngs) -> nnx.BatchNorm:
    """BatchNorm over the channel (last) axis with torch's momentum and epsilon.

    Running statistics live in ``param_dtype`` (f32) whatever the compute ``dtype``; Flax
    reduces the batch statistics in f32 even for bf16 inputs. Computing in bf16 from f32
    parameters, the layer computes and returns f32, and the blocks cast their outputs back to
    the compute dtype: its scale and bias gradients are then f32 sums on every compiler.
    Returning bf16, they are sums of a bf16 cotangent, which XLA:TPU's bfloat16 propagation
    narrowed to bf16 and all-reduced in bf16. The price is memory: the XLA:GPU compiler puts
    the Market train step on one H100 at 3.01 GiB for batch 32 and 0.065 GiB per image more,
    against 2.70 and 0.052 with a bf16 output. (PyTorch's cuDNN BatchNorm under autocast
    returns bf16 and sums its parameter gradients in f32 inside its own backward kernel; the
    same here would need a BatchNorm with a backward pass of its own.)
    """
    dtype = None if _narrower(dtype, param_dtype) else dtype  # None: Flax's f32 result
    return nnx.BatchNorm(features, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, dtype=dtype,
                         param_dtype=param_dtype, use_bias=use_bias, rngs=rngs)


def _narrower(dtype, param_dtype) -> bool:
    """Whether a layer computes in a narrower float than it stores its parameters in."""
    return jnp.dtype(dtype).itemsize < jnp.dtype(param_dtype).itemsize


def conv(in_features: int, out_features: int, kernel: int, stride: int = 1, pad: int = 0, *,
         dtype, param_dtype, conv_general_dilated=jax.lax.conv_general_dilated,
         init: str = "he_fan_out", rngs: nnx.Rngs) -> nnx.Conv:
    """Bias-free square convolution with torch's symmetric padding and ``CONV_INITS[init]``.
    ``conv_general_dilated`` is ``nnx.Conv``'s own hook: any function with the signature of
    ``lax.conv_general_dilated`` that computes the same values (``dualattn.models.cpu_conv``).
    Computing in bfloat16 from float32 parameters, the kernel's gradient is accumulated in
    float32 (``dualattn.models.mixed_precision``)."""
    extra = {}
    if _narrower(dtype, param_dtype):
        extra = {"promote_dtype": mixed_precision.promote_inputs}
        conv_general_dilated = mixed_precision.conv_general_dilated(conv_general_dilated)
    return nnx.Conv(in_features, out_features, (kernel, kernel), strides=(stride, stride),
                    padding=((pad, pad), (pad, pad)), use_bias=False, dtype=dtype,
                    param_dtype=param_dtype, kernel_init=CONV_INITS[init],
                    conv_general_dilated=conv_general_dilated, rngs=rngs, **extra)


def linear(in_features: int, out_features: int, *, dtype, param_dtype,
           rngs: nnx.Rngs, **kwargs) -> nnx.Linear:
    """``nnx.Linear``, with the kernel's gradient accumulated in float32 when computing in
    bfloat16 from float32 parameters, as ``conv``."""
    if _narrower(dtype, param_dtype):
        kwargs.update(promote_dtype=mixed_precision.promote_inputs,
                      dot_general=mixed_precision.dot_general)
    return nnx.Linear(in_features, out_features, dtype=dtype, param_dtype=param_dtype,
                      rngs=rngs, **kwargs)


def max_pool(x: jax.Array, window: int, stride: int, pad: int) -> jax.Array:
    """torch's ``MaxPool2d(window, stride, pad)`` on NHWC: -inf padding, so a padded position
    never wins; the gradient goes to the first maximum of each window, as in torch."""
    return nnx.max_pool(x, (window, window), strides=(stride, stride),
                        padding=((pad, pad), (pad, pad)))
