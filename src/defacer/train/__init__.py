"""Training the facial-feature detector (extra ``train``: PyTorch, MONAI, ONNX)."""
