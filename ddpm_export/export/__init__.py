"""PyTorch -> ONNX (-> TensorRT). Every module here imports torch, onnx or polygraphy except
``graph`` (onnx only); the torch-free interface they produce lives in :mod:`ddpm_export.contract`."""
