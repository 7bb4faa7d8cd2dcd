"""ONNX Runtime's GPU execution providers as sampling backends: GPU speed without building engines.

- ``ort-cuda``: ``CUDAExecutionProvider`` (``device_id``).
- ``ort-tensorrt``: ``TensorrtExecutionProvider`` (ONNX Runtime builds and caches TensorRT
  engines itself) with CUDA for what TensorRT does not take: ``trt_fp16_enable``,
  ``trt_engine_cache_enable`` / ``trt_engine_cache_path`` and ``trt_timing_cache_enable`` /
  ``trt_timing_cache_path`` in an engine cache folder (the engines of each ONNX file in a
  sub-folder named by its sha256: ONNX Runtime's cache key hashes the file's name, its tensor
  names and the versions but not the weights, so a retrained model exported to the same name
  would otherwise run the old engine), and one optimisation profile from the
  file's batch range (``trt_profile_min_shapes`` / ``_opt_`` / ``_max_``), so no shape rebuilds.

Both need the ``onnxruntime-gpu`` build. A provider that is not available, or a session that
ends up without it (ONNX Runtime silently falls back to the CPU when a provider fails to load),
raises :class:`ProviderUnavailable` (a missing dependency: exit status 2) -- a GPU backend running on
the CPU is an error, not a success.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from ddpm_export.checks import Registry
from ddpm_export.contract.choices import ORT_GPU_BACKENDS as BACKEND_NAMES
from ddpm_export.contract.metadata import sha256_file
from ddpm_export.contract.spec import ExportSpec
from ddpm_export.errors import BadInputError, InputNotFoundError, MissingDependencyError, ort_gpu_hint
from ddpm_export.files import made_parents

__all__ = ["ORT_GPU_BACKENDS", "ProviderUnavailable", "create_gpu_session", "gpu_backend", "provider_options"]

#: backend name -> the execution provider it must run on
ORT_GPU_BACKENDS: Registry[str] = Registry("backend", zip(
    BACKEND_NAMES, ("CUDAExecutionProvider", "TensorrtExecutionProvider"), strict=True))


class ProviderUnavailable(MissingDependencyError, RuntimeError):
    """The execution provider a GPU backend needs is missing here (or was not used by the session)."""


def _shapes(spec: ExportSpec, which: int) -> str:
    """``"x_t:1x3x32x32,t:1"``: ONNX Runtime's TensorRT profile-shape syntax, for min (0), opt (1), max (2)."""
    return ",".join(f"{name}:{'x'.join(str(d) for d in shapes[which])}" for name, shapes in spec.profiles().items())


def provider_options(backend: str, spec: ExportSpec, *, device: int = 0, fp16: bool = False,
                     cache_dir: str | Path | None = None, model_key: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    """The ``providers`` list for ``InferenceSession`` (pure: tested on a CPU). With ``cache_dir``,
    engines go to ``cache_dir/model_key`` (``model_key``: the file's sha256, cut to 16 hex digits)
    and the timing cache, which holds no weights, to ``cache_dir``."""
    ORT_GPU_BACKENDS[backend]  # BadInputError listing the choices
    cuda = ("CUDAExecutionProvider", {"device_id": device})
    if backend == "ort-cuda":
        if fp16 or cache_dir is not None:
            raise BadInputError("fp16 and cache_dir apply to backend='ort-tensorrt' only")
        return [cuda]
    trt: dict[str, Any] = {"device_id": device, "trt_fp16_enable": fp16,
                           "trt_profile_min_shapes": _shapes(spec, 0), "trt_profile_opt_shapes": _shapes(spec, 1),
                           "trt_profile_max_shapes": _shapes(spec, 2)}
    if cache_dir is not None:
        engines = Path(cache_dir) / model_key if model_key is not None else Path(cache_dir)
        trt.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(engines),
                   trt_timing_cache_enable=True, trt_timing_cache_path=str(cache_dir))
    return [("TensorrtExecutionProvider", trt), cuda]


def create_gpu_session(path: str | Path, backend: str, spec: ExportSpec, *, device: int = 0, fp16: bool = False,
                       cache_dir: str | Path | None = None, session_options: Any = None) -> Any:
    """An ``InferenceSession`` on ``backend``'s provider; raises ProviderUnavailable rather than
    return a session that runs on the CPU."""
    import onnxruntime as ort

    from ddpm_export.runtime.onnxruntime_backend import open_session

    path = Path(path)
    key = sha256_file(path)[:16] if cache_dir is not None and path.is_file() else None
    providers = provider_options(backend, spec, device=device, fp16=fp16, cache_dir=cache_dir, model_key=key)
    want = ORT_GPU_BACKENDS[backend]
    available = ort.get_available_providers()
    missing = [name for name, _ in providers if name not in available]
    if missing:
        raise ProviderUnavailable(f"backend {backend!r}: this onnxruntime ({ort.__version__}) has no "
                                  f"{', '.join(missing)} (available: {', '.join(available)}); {ort_gpu_hint()}")
    if not path.is_file():
        raise InputNotFoundError(f"{path}: no such ONNX file", path)
    # the engine cache's folders exist before the session starts; removed again if it fails (empty)
    with made_parents(Path(cache_dir) / key / "engine") if key is not None else contextlib.nullcontext():
        session = open_session(path, session_options, providers)  # a file it cannot load: BadInputError, as on the CPU
        used = session.get_providers()
        if not used or used[0] != want:
            raise ProviderUnavailable(f"backend {backend!r}: ONNX Runtime fell back to {', '.join(used) or 'nothing'} "
                                      f"instead of {want} (see its log: CUDA/cuDNN/TensorRT libraries or the GPU "
                                      f"missing)")
    return session


def gpu_backend(path: str | Path, backend: str, spec: ExportSpec, **kwargs: Any) -> Any:
    """An :class:`~ddpm_export.runtime.onnxruntime_backend.OnnxRuntimeBackend` on ``backend``."""
    from ddpm_export.runtime.onnxruntime_backend import OnnxRuntimeBackend

    return OnnxRuntimeBackend(create_gpu_session(path, backend, spec, **kwargs), spec, source=str(path))
