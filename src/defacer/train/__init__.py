"""Training the facial-feature detector (extra ``train``: PyTorch, TorchIO, ONNX)."""
