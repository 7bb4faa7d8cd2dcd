"""The CPU backends (ONNX Runtime's CPU provider, OpenVINO): what each accepts, how to load it on
an ONNX file, and its default thread count.

The backend *names* are :data:`ddpm_export.contract.choices.BACKENDS` (the one list the CLI and
``Pipeline`` read); :data:`CPU_BACKENDS` maps the CPU ones to their loaders. The GPU backends
(``ort-cuda``, ``ort-tensorrt``: :mod:`ddpm_export.runtime.ort_gpu`; ``tensorrt``:
:mod:`ddpm_export.runtime.tensorrt`) choose their own threads.

Threads. Every CPU backend takes ``threads`` (ONNX Runtime: ``intra_op_num_threads = threads``
and ``inter_op_num_threads = 1``; OpenVINO: ``INFERENCE_NUM_THREADS``). ``None`` picks
:func:`default_threads` by model size and backend, as measured on a 2-core AMD EPYC (DDIM
ms/step, 1 vs 2 threads, interleaved in one process): ONNX Runtime ran the shipped digits model
(4.6 MB file) in 1.8 vs 3.4 ms at batch 1 and 10.8 vs 21.5 ms at batch 8, and tiny in 0.9 vs
1.7 ms -- per-node work is too small to pay for the hand-off between threads -- so under
:data:`SMALL_MODEL_BYTES` of ONNX file it gets one thread. OpenVINO ran digits faster on 2
(3.2 vs 5.8 ms at batch 1; 14.5 vs 18.4 at batch 8), so it keeps its own default. ddpm-cifar10
(97 MB) gains from every core on both; above the size the engines' defaults apply (one thread
per physical core).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from ddpm_export.configbase import check_choice
from ddpm_export.diffusion import Backend
from ddpm_export.errors import BadInputError, MissingDependencyError, describe
from ddpm_export.runtime.onnx_wire import scan_external_data
from ddpm_export.threads import check_threads, get_threads
from ddpm_export.contract.choices import BACKENDS
from ddpm_export.contract.spec import ExportSpec

__all__ = ["BackendKind", "CPU_BACKENDS", "ClosableBackend", "INFERENCE_PRECISIONS", "SMALL_MODEL_BYTES",
           "RuntimeOptions", "check_options", "default_threads", "describe_precision", "effective_precision",
           "installed_cpu_backends", "load_onnx_backend"]

#: OpenVINO's inference precision hints (``None``: the plugin's default for this CPU)
INFERENCE_PRECISIONS: tuple[str, ...] = ("f32", "bf16")
#: ONNX files smaller than this default to one thread (see the module docstring)
SMALL_MODEL_BYTES = 16 * 2**20


class ClosableBackend(Backend, Protocol):
    """A backend that holds an engine's resources (a session, compiled models, a CUDA stream and
    device buffers) until :meth:`close`: every backend ``Pipeline.from_onnx`` / ``from_bundle``
    opens (ONNX Runtime on any provider, OpenVINO, TensorRT)."""

    def close(self) -> None:
        """Release the engine's resources (idempotent); a call after it raises BadInputError."""


@dataclasses.dataclass(frozen=True)
class RuntimeOptions:
    """How to run a file: ``threads`` (>= 1, or None for :func:`default_threads`),
    ``inference_precision`` (OpenVINO only), ``providers`` and ``session_options`` (ONNX Runtime
    only; the caller's ``SessionOptions`` are used as given: ``threads``, when given, is written
    into them, else their own thread settings stand)."""

    threads: int | None = None
    inference_precision: str | None = None
    providers: Sequence[Any] | None = None
    session_options: Any = None


@dataclasses.dataclass(frozen=True)
class BackendKind:
    """One CPU backend: its name, the pip extra and the module that provide it, the options it
    accepts, its loader."""

    name: str
    extra: str
    module: str
    options: tuple[str, ...]
    loader: Callable[[Path, ExportSpec, RuntimeOptions], ClosableBackend]
    small_model_threads: int | None = None  # the default for a file under SMALL_MODEL_BYTES


def _onnxruntime(path: Path, spec: ExportSpec, options: RuntimeOptions) -> ClosableBackend:
    try:  # a core dependency, missing in a half-done swap to onnxruntime-gpu
        from ddpm_export.runtime.onnxruntime_backend import OnnxRuntimeBackend, session_options_for
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] != "onnxruntime":
            raise
        raise MissingDependencyError(describe(e)) from e

    opts = session_options_for(options.threads, options.session_options)
    return OnnxRuntimeBackend.from_path(path, spec, providers=options.providers, session_options=opts)


def _openvino(path: Path, spec: ExportSpec, options: RuntimeOptions) -> ClosableBackend:
    from ddpm_export.runtime.openvino_backend import OpenVinoBackend

    return OpenVinoBackend(path, spec, threads=options.threads, inference_precision=options.inference_precision)


CPU_BACKENDS: dict[str, BackendKind] = {
    "onnxruntime": BackendKind("onnxruntime", "(core)", "onnxruntime", ("threads", "providers", "session_options"),
                               _onnxruntime, small_model_threads=1),
    "openvino": BackendKind("openvino", "openvino", "openvino", ("threads", "inference_precision"), _openvino),
}
if not set(CPU_BACKENDS) <= set(BACKENDS):  # pragma: no cover -- a programming error
    raise RuntimeError("every CPU backend must be named in contract.choices.BACKENDS")


def effective_precision(file_precision: str, backend: Backend) -> str:
    """The arithmetic a backend really runs the file in: ``"bf16"`` when OpenVINO computes an
    fp32 or fp16 file in bfloat16 (its ``inference_precision``, its default on CPUs with BF16;
    bfloat16's 8 mantissa bits are coarser than fp16's 11), ``"fp16"`` when it computes an fp32
    file in f16 (its default on some ARM CPUs) or when ONNX Runtime's TensorRT provider may
    (``ort-tensorrt`` with ``trt_fp16``), else the file's own precision (an int8 file stays
    ``"int8"``: its error is the quantizer's)."""
    from ddpm_export.runtime.openvino_backend import OpenVinoBackend

    if isinstance(backend, OpenVinoBackend):
        if backend.inference_precision == "bf16" and file_precision in ("fp32", "fp16"):
            return "bf16"
        if backend.inference_precision == "f16" and file_precision == "fp32":
            return "fp16"
    # not imported here (a TensorRT-only app needs no onnxruntime): loaded wherever backend is an OnnxRuntimeBackend
    ort_module = sys.modules.get("ddpm_export.runtime.onnxruntime_backend")
    if ort_module is not None and isinstance(backend, ort_module.OnnxRuntimeBackend) and backend.trt_fp16:
        return "fp16" if file_precision == "fp32" else file_precision
    return file_precision


def describe_precision(file_precision: str, backend: Backend) -> str:
    """How a summary line names what ``backend`` computes: ``"fp32"``, ``"fp32 file computed in
    bf16"`` (:func:`effective_precision`), or for an int8 file on OpenVINO ``"int8, float parts in
    bf16"`` / ``"... in f32"`` (the ops left float run in its ``inference_precision``)."""
    from ddpm_export.runtime.openvino_backend import OpenVinoBackend

    computed = effective_precision(file_precision, backend)
    if computed != file_precision:
        return f"{file_precision} file computed in {computed}"
    if file_precision == "int8" and isinstance(backend, OpenVinoBackend):
        return f"int8, float parts in {backend.inference_precision}"
    return file_precision


def installed_cpu_backends() -> tuple[str, ...]:
    """The CPU backends whose engine can be imported here, in :data:`CPU_BACKENDS` order."""
    return tuple(name for name, kind in CPU_BACKENDS.items() if importlib.util.find_spec(kind.module) is not None)


def check_options(backend: str, options: RuntimeOptions) -> None:
    """Refuse an unknown backend, a bad value, or an option the backend does not take (by name)."""
    check_choice("backend", backend, tuple(CPU_BACKENDS))
    kind = CPU_BACKENDS[backend]
    if options.threads is not None:
        check_threads("threads", options.threads)
    if options.inference_precision is not None:
        check_choice("inference_precision", options.inference_precision, INFERENCE_PRECISIONS)
    for name in ("threads", "inference_precision", "providers", "session_options"):
        if getattr(options, name) is not None and name not in kind.options:
            raise BadInputError(f"{name} does not apply to the {backend} backend (it takes: "
                             f"{', '.join(kind.options) or 'none of threads, inference_precision, providers'})")


def default_threads(path: str | Path, backend: str = "onnxruntime") -> int | None:
    """The backend's thread count for a small model (ONNX file < :data:`SMALL_MODEL_BYTES`), else
    None (the engine's default: every core)."""
    path = Path(path)
    size = path.stat().st_size
    if size < SMALL_MODEL_BYTES:  # then its weights may lie beside it, under any name (a walk of the file)
        size += sum(_file_size(path.parent / name) for name in scan_external_data(path) or ())
    return CPU_BACKENDS[backend].small_model_threads if size < SMALL_MODEL_BYTES else None


def _file_size(path: Path) -> int:
    """The size of an external-data file; 0 for one that is not there or cannot be looked at (a
    300-character location raised OSError 'File name too long' here, outside the errors' kinds):
    the engine then refuses the file, naming it."""
    try:
        return path.stat().st_size if path.is_file() else 0
    except OSError:
        return 0


def load_onnx_backend(backend: str, path: str | Path, spec: ExportSpec, options: RuntimeOptions) -> ClosableBackend:
    """The ``backend`` (one of :data:`CPU_BACKENDS`) on the ONNX file ``path``."""
    check_options(backend, options)
    kind = CPU_BACKENDS[backend]
    path = Path(path)
    if options.threads is None and options.session_options is None:
        # the command's `ddpm-export --threads N`, else by model size; the caller's own session
        # options keep their thread settings
        options = dataclasses.replace(options, threads=get_threads() or default_threads(path, backend))
    return kind.loader(path, spec, options)

