"""Serving beyond one machine: an NVIDIA Triton Inference Server model repository from a bundle.

Torch-free. :func:`write_repository` writes a ``unet`` model (ONNX Runtime, TensorRT, OpenVINO
or a Python-backend model running our ONNX Runtime backend) with dynamic batching, and a
``sampler`` Python-backend model whose loop is :func:`ddpm_export.diffusion.sample` calling
``unet`` per step through BLS (:mod:`ddpm_export.serve.triton_models`), so a served request
returns the images :meth:`ddpm_export.runtime.Pipeline.sample` returns for the same arguments.
"""

from ddpm_export.serve.configs import UNET_BACKENDS
from ddpm_export.serve.repository import UNetBackend, write_repository
from ddpm_export.serve.requests import RequestError, parse_request

__all__ = ["UNET_BACKENDS", "RequestError", "UNetBackend", "parse_request", "write_repository"]
