"""The GPU stack, imported on demand with one message per missing package (torch-free).

TensorRT and cuda-python (the ``gpu`` extra) are optional: both the engine build
(:mod:`ddpm_export.export.tensorrt`) and the TensorRT runtime (:mod:`ddpm_export.runtime.tensorrt`)
import them through here, when they are first needed.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from ddpm_export.errors import MissingDependencyError

__all__ = ["gpu_missing", "import_cudart", "import_tensorrt", "require_gpu"]

INSTALL_HINT = "on a machine with an NVIDIA GPU: pip install 'ddpm-export[gpu]'"


def import_tensorrt(what: str = "TensorRT") -> Any:
    """The ``tensorrt`` module; MissingDependencyError saying ``what`` needs it and how to install it."""
    try:
        import tensorrt
    except ImportError as e:
        raise MissingDependencyError(f"{what} needs the 'tensorrt' package (TensorRT >= 10), which is not "
                                     f"installed; {INSTALL_HINT}") from e
    return tensorrt


def import_cudart(what: str = "TensorRT") -> Any:
    """cuda-python's runtime module (``cuda.bindings.runtime`` from 12.6, ``cuda.cudart`` before)."""
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError as e:
            raise MissingDependencyError(f"{what} needs the 'cuda-python' package for device buffers, which is "
                                         f"not installed; pip install 'ddpm-export[gpu]'") from e
    return cudart


def gpu_missing() -> str | None:
    """Why nothing can run on TensorRT here -- no tensorrt, no cuda-python, no driver or no GPU --
    or None. Checked before work that would be wasted (an export, a build), importing nothing
    heavier than cuda-python."""
    if importlib.util.find_spec("tensorrt") is None:
        return f"the 'tensorrt' package is not installed; {INSTALL_HINT}"
    try:
        rt = import_cudart()
    except MissingDependencyError:
        return f"the 'cuda-python' package is not installed; {INSTALL_HINT}"
    try:
        err, count = rt.cudaGetDeviceCount()
    except Exception as e:  # noqa: BLE001 - a driver missing altogether raises instead of returning an error
        return f"CUDA is not usable here ({type(e).__name__}: {e})"
    if err != rt.cudaError_t.cudaSuccess or count < 1:
        return f"no CUDA GPU is visible (cudaGetDeviceCount: {err}, {count} device(s))"
    return None


def require_gpu(what: str, error: type[MissingDependencyError] = MissingDependencyError) -> None:
    """Raise ``error`` (exit 2) saying ``what`` cannot happen here and why (:func:`gpu_missing`),
    before any work or CUDA call; nothing when TensorRT, cuda-python and a GPU are all there."""
    why = gpu_missing()
    if why is not None:
        raise error(f"{what}: {why}")
