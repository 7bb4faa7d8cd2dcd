"""TensorRT 10 as a sampling backend (implements :class:`ddpm_export.diffusion.Backend`).

``tensorrt`` and ``cuda-python`` (the ``gpu`` extra) are imported when a backend is built, not
when this module is imported, so the rest of the runtime works without them. An engine is only
valid for the ONNX file it was built from, for the TensorRT version that built it (or later ones
of its major version, when version-compatible) and for GPUs its hardware compatibility allows; all
are read from its sidecar ``<engine file>.json`` (e.g. ``tiny.plan`` -> ``tiny.plan.json``,
:mod:`ddpm_export.contract.sidecar`), and a mismatch is refused before the engine is deserialised.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from ddpm_export.contract.sidecar import (
    EngineMismatchError, check_sidecar, needs_host_code, read_sidecar, sidecar_path,
)
from ddpm_export.contract.spec import OUT_NAME, ExportSpec, feeds_for
from ddpm_export.errors import BadInputError, EngineError
from ddpm_export.gpu import import_cudart, import_tensorrt, require_gpu

__all__ = ["EngineMismatchError", "TensorRTBackend", "read_sidecar", "sidecar_path"]


class TensorRTBackend:
    """``backend(x_t, t, cond) -> model output`` on a deserialised TensorRT engine.

    One execution context and one CUDA stream per backend; calls are serialised by a lock (an
    execution context is not thread-safe), inputs are checked with ``ExportSpec.check_inputs``,
    and each call returns a fresh host array, so recorded trajectories stay intact.

    Args:
        engine_path: the serialised engine (``.plan`` / ``.engine``) with its sidecar beside it.
        spec: the export spec of the ONNX file it was built from.
        onnx_sha256: when given, the sidecar's ``onnx_sha256`` must equal it.
        device: CUDA device ordinal.
    """

    def __init__(self, engine_path: str | Path, spec: ExportSpec, *, onnx_sha256: str | None = None,
                 device: int = 0) -> None:
        engine_path = Path(engine_path)
        sidecar = read_sidecar(engine_path)
        check_sidecar(engine_path, sidecar, onnx_sha256=onnx_sha256, tensorrt_version=None)
        require_gpu(f"{engine_path}: cannot run a TensorRT engine here")  # before any CUDA call
        trt = import_tensorrt("TensorRTBackend")
        self._cudart = cudart = import_cudart("TensorRTBackend")
        count = self._check(cudart.cudaGetDeviceCount())
        if not 0 <= device < count:
            raise BadInputError(f"device {device}: this machine has {count} CUDA GPU(s) (devices 0..{count - 1})")
        props = self._check(cudart.cudaGetDeviceProperties(device))
        check_sidecar(engine_path, sidecar, onnx_sha256=None, tensorrt_version=trt.__version__,
                      compute_capability=f"{props.major}.{props.minor}")
        self.spec = spec
        self._path = engine_path
        self._device = device
        self._check(cudart.cudaSetDevice(device))
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._runtime.engine_host_code_allowed = needs_host_code(sidecar)  # version-compatible engines
        self.engine = self._runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self.engine is None:
            raise EngineError(f"{engine_path}: TensorRT {trt.__version__} could not deserialise the engine (see "
                              f"its log above); rebuild it with `ddpm-export trt`")
        names = {self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)}
        missing = [n for n in [*spec.input_names, OUT_NAME] if n not in names]
        if missing:
            raise BadInputError(f"{engine_path}: the engine has no tensor(s) {missing} (it has {sorted(names)})")
        self._dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self.context = self.engine.create_execution_context()
        self._stream = self._check(cudart.cudaStreamCreate())
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, bytes)
        self._lock = threading.Lock()

    def __call__(self, x_t: np.ndarray, t: np.ndarray, cond: np.ndarray | None) -> np.ndarray:
        feeds = feeds_for(self.spec, x_t, t, cond)
        self.spec.check_inputs(feeds)
        cudart = self._cudart
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        with self._lock:
            if self._stream is None:
                raise BadInputError(f"{self._path}: this TensorRT backend is closed; load the engine again")
            self._check(cudart.cudaSetDevice(self._device))  # the current device is per thread
            hosts = []  # keep the host arrays alive until the stream is synchronised
            for name, value in feeds.items():
                host = np.ascontiguousarray(value, dtype=self._dtypes[name])  # e.g. int64 -> an int32 engine input
                hosts.append(host)
                if not self.context.set_input_shape(name, host.shape):
                    raise BadInputError(f"{name}: shape {host.shape} is outside the engine's optimisation profile")
                ptr = self._buffer(name, host.nbytes)
                self._check(cudart.cudaMemcpyAsync(ptr, host.ctypes.data, host.nbytes, h2d, self._stream))
                self._address(name, ptr)
            out = np.empty(tuple(self.context.get_tensor_shape(OUT_NAME)), dtype=self._dtypes[OUT_NAME])
            self._address(OUT_NAME, self._buffer(OUT_NAME, out.nbytes))
            if not self.context.execute_async_v3(int(self._stream)):
                raise EngineError("TensorRT could not run the engine (execute_async_v3 failed; see its log above)")
            self._check(cudart.cudaMemcpyAsync(out.ctypes.data, self._buffers[OUT_NAME][0], out.nbytes, d2h,
                                               self._stream))
            self._check(cudart.cudaStreamSynchronize(self._stream))
        return out.astype(np.float32, copy=False)

    def _buffer(self, name: str, nbytes: int) -> int:
        """A device buffer of at least ``nbytes`` for ``name``, grown (never shrunk) on demand."""
        ptr, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                self._check(self._cudart.cudaFree(ptr))
            ptr = int(self._check(self._cudart.cudaMalloc(max(nbytes, 1))))
            self._buffers[name] = (ptr, nbytes)
        return ptr

    def _address(self, name: str, ptr: int) -> None:
        """Bind ``name`` to the device buffer at ``ptr``; EngineError if TensorRT refuses it."""
        if not self.context.set_tensor_address(name, ptr):
            raise EngineError(f"TensorRT refused the device buffer of {name} (set_tensor_address; see its log above)")

    def _check(self, result: Any) -> Any:
        """cuda-python returns ``(err, *values)``; EngineError (exit 2) naming the CUDA error, else the
        value(s)."""
        err, *values = result if isinstance(result, tuple) else (result,)
        if err != self._cudart.cudaError_t.cudaSuccess:
            raise EngineError(f"CUDA error: {err} (e.g. out of GPU memory, or the device was lost)")
        return values[0] if len(values) == 1 else (tuple(values) or None)

    def close(self) -> None:
        """Free the device buffers, the stream, the execution context and the engine (idempotent); a
        call after it raises BadInputError."""
        with self._lock:
            if self._stream is None:
                return
            self._check(self._cudart.cudaSetDevice(self._device))
            for ptr, _ in self._buffers.values():
                self._cudart.cudaFree(ptr)
            self._buffers.clear()
            self._cudart.cudaStreamDestroy(self._stream)
            self._stream = None
            self.context = self.engine = None  # the context's activation memory, the engine's weights

    def __enter__(self) -> "TensorRTBackend":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
