"""PyTorch interoperability: the twin network, weight converters, numerics comparison.

Only ``dualattn.interop.torch_model`` (and what imports it) needs torch; ``names`` is pure
NumPy so the training path can read torchvision checkpoints without torch.
"""
