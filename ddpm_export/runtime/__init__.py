"""The torch-free runtime: run exported models with numpy and one inference engine.

Backends for ONNX Runtime and TensorRT, and bundle loading, land here; each implements
:class:`ddpm_export.diffusion.Backend` and samples through :func:`ddpm_export.diffusion.sample`.
Nothing in this package imports torch, not even lazily (``tests/test_torch_free.py`` proves it).
"""
