"""Serving a trained run: ``FeatureExtractor`` for crops in memory, and the StableHLO file
(``stablehlo``) that serves with JAX alone. The ONNX file goes through the PyTorch twin, so
it is ``dualattn.interop.onnx``'s."""
