"""The GPU stack, imported on demand with one message per missing package (torch-free).

TensorRT and cuda-python (the ``gpu`` extra) are optional: both the engine build
(:mod:`ddpm_export.export.tensorrt`) and the TensorRT runtime (:mod:`ddpm_export.runtime.tensorrt`)
import them through here, when they are first needed.
"""

from __future__ import annotations

from typing import Any

from ddpm_export.errors import MissingDependencyError

__all__ = ["import_cudart", "import_tensorrt"]

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
