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
    """The ``tensorrt`` module; MissingDependencyError saying ``what`` needs it, why it cannot be
    imported (:func:`_unusable`) and how to install it."""
    try:
        return _load_tensorrt()
    except (ImportError, OSError) as e:
        raise MissingDependencyError(f"{what} needs TensorRT >= 10: {_unusable('tensorrt', e)}") from e


def import_cudart(what: str = "TensorRT") -> Any:
    """cuda-python's runtime module (``cuda.bindings.runtime`` from 12.6, ``cuda.cudart`` before)."""
    try:
        return _load_cudart()
    except (ImportError, OSError) as e:
        raise MissingDependencyError(f"{what} needs cuda-python for device buffers: "
                                     f"{_unusable('cuda-python', e)}") from e


def _load_tensorrt() -> Any:
    import tensorrt  # OSError too: a library its __init__ loads with ctypes

    return tensorrt


def _load_cudart() -> Any:
    """cuda-python's runtime module, or the import error of the one that is installed."""
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except (ImportError, OSError) as new:
        try:
            from cuda import cudart  # older cuda-python
        except (ImportError, OSError) as old:
            raise (old if _found("cuda.cudart") and not _found("cuda.bindings") else new) from None
    return cudart


#: the modules each optional package is installed as (cuda-python's runtime API: newest first)
_MODULES = {"tensorrt": ("tensorrt",), "cuda-python": ("cuda.bindings", "cuda.cudart")}


def _found(module: str) -> bool:
    """Whether ``module`` is installed (found on the path, not imported)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing (or blocked)
        return False


def _unusable(package: str, error: BaseException) -> str:
    """Why ``package`` cannot be imported: not installed, or installed but failing to import (e.g. a
    shared library it loads is missing: ``error`` kept), with how to install it."""
    if not any(map(_found, _MODULES[package])):
        return f"the '{package}' package is not installed; {INSTALL_HINT}"
    return (f"the '{package}' package is installed but fails to import ({type(error).__name__}: {error}); "
            f"reinstall it (with its CUDA/TensorRT libraries) {INSTALL_HINT}")


def gpu_missing() -> str | None:
    """Why nothing can run on TensorRT here -- tensorrt or cuda-python missing or failing to import,
    no driver or no GPU -- or None. Checked before work that would be wasted (an export, a build)."""
    try:
        _load_tensorrt()
    except (ImportError, OSError) as e:
        return _unusable("tensorrt", e)
    try:
        rt = _load_cudart()
    except (ImportError, OSError) as e:
        return _unusable("cuda-python", e)
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
