"""PyTorch -> ONNX (-> TensorRT). ``spec`` is torch-free; the other modules import torch."""
