"""PyTorch interoperability, the one package that needs torch: the twin network
(``torch_model``), what each framework computes for one batch (``traces``), the numerics
comparison (``numerics``) and the ONNX export through the twin (``onnx``)."""
