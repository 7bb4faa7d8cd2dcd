"""The torch-free runtime: run exported models with numpy and one inference engine.

:class:`Pipeline` samples images from an ONNX file (``Pipeline.from_onnx``) or a verified bundle
(``Pipeline.from_bundle``); its backends -- :class:`OnnxRuntimeBackend` here, ``TensorRTBackend``
in :mod:`ddpm_export.runtime.tensorrt` -- implement :class:`ddpm_export.diffusion.Backend` and
sample through :func:`ddpm_export.diffusion.sample`. Nothing in this package imports torch, not
even lazily (``tests/runtime/test_torch_free.py`` and ``tests/contract/test_import_rules.py`` prove it).
"""

from ddpm_export.runtime.bundle import BundleError, Manifest, make_bundle, read_manifest, verify_bundle
from ddpm_export.runtime.info import MetadataError, ModelInfo, read_info, read_metadata
from ddpm_export.runtime.pipeline import Pipeline, SampleRequest, chunk_seed



def __getattr__(name: str) -> object:
    """``OnnxRuntimeBackend`` is imported on first use, so a TensorRT-only app needs no onnxruntime."""
    if name == "OnnxRuntimeBackend":
        from ddpm_export.runtime.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BundleError",
    "Manifest",
    "MetadataError",
    "ModelInfo",
    "OnnxRuntimeBackend",
    "Pipeline",
    "SampleRequest",
    "chunk_seed",
    "make_bundle",
    "read_info",
    "read_manifest",
    "read_metadata",
    "verify_bundle",
]
