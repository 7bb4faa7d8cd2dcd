"""ONNX Runtime as a sampling backend (implements :class:`ddpm_export.diffusion.Backend`).

One ``InferenceSession`` per backend; ``InferenceSession.run`` is thread-safe and returns fresh
arrays, so one backend (and one :class:`~ddpm_export.runtime.Pipeline`) serves many threads.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnxruntime as ort

from ddpm_export.contract.spec import OUT_NAME, ExportSpec, feeds_for
from ddpm_export.errors import (BadInputError, EngineError, InputNotFoundError, MissingDependencyError,
                                WrongTypeError, check_onnxruntime, load_error, ort_gpu_hint, without_ort_status)
from ddpm_export.runtime.integrity import check_graph
from ddpm_export.threads import get_threads

check_onnxruntime(ort)  # an onnxruntime folder a half-done swap with onnxruntime-gpu left empty

__all__ = ["DEFAULT_PROVIDERS", "OnnxRuntimeBackend", "check_providers", "create_session", "open_session",
           "session_options_for", "trt_fp16_enabled"]

#: CPU unless told otherwise; pass e.g. ``["CUDAExecutionProvider", "CPUExecutionProvider"]`` with onnxruntime-gpu.
DEFAULT_PROVIDERS = ("CPUExecutionProvider",)


class OnnxRuntimeBackend:
    """``backend(x_t [B,C,H,W] f32, t [B] i64, cond) -> model output [B,C,H,W] f32`` on ONNX Runtime.

    Every call is checked against the :class:`ExportSpec` (names, dtypes, shapes, batch range,
    ``t`` and class-id ranges) before it reaches the session, so a bad feed fails with a message
    naming the input rather than deep inside the runtime.
    """

    def __init__(self, session: ort.InferenceSession, spec: ExportSpec, *, source: str = "the session") -> None:
        check_graph(session.get_inputs(), session.get_outputs(), spec, source=source)
        self.session: ort.InferenceSession | None = session  # None once closed
        self.spec = spec
        self.source = source
        #: whether TensorRT may compute the graph in fp16 (the session runs on it with ``trt_fp16_enable``)
        self.trt_fp16 = trt_fp16_enabled(session.get_providers(), session.get_provider_options())

    @classmethod
    def from_path(cls, path: str | Path, spec: ExportSpec, *, providers: Sequence[Any] | None = None,
                  session_options: ort.SessionOptions | None = None) -> "OnnxRuntimeBackend":
        return cls(create_session(path, providers=providers, session_options=session_options), spec, source=str(path))

    def __call__(self, x_t: np.ndarray, t: np.ndarray, cond: np.ndarray | None) -> np.ndarray:
        feeds = feeds_for(self.spec, x_t, t, cond)
        self.spec.check_inputs(feeds)
        session = self.session
        if session is None:
            raise BadInputError(f"{self.source}: this ONNX Runtime backend is closed; load the file again")
        try:
            return session.run([OUT_NAME], feeds)[0]
        except Exception as e:  # ONNX Runtime's Fail, RuntimeException, ... derive from Exception only
            raise EngineError(f"{self.source}: ONNX Runtime failed on a model call at batch {x_t.shape[0]} "
                              f"({run_error(e)})") from e

    def close(self) -> None:
        """Drop the session (its memory; a GPU provider's device memory and CUDA stream with it);
        idempotent. A call after it raises BadInputError."""
        self.session = None


def create_session(path: str | Path, *, providers: Sequence[Any] | None = None,
                   session_options: ort.SessionOptions | None = None) -> ort.InferenceSession:
    """An ``InferenceSession`` on ``path`` with ``providers`` (default: CPU)."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"{path}: no such ONNX file", path)
    threads = get_threads()
    if session_options is None and threads is not None:  # `ddpm-export --threads N`
        session_options = session_options_for(threads)
    wanted = check_providers(providers) if providers is not None else list(DEFAULT_PROVIDERS)
    session = open_session(path, session_options, wanted)
    dropped = [name for name in map(_provider_name, wanted) if name not in session.get_providers()]
    if dropped:  # ONNX Runtime falls back to the CPU with a warning; a slow success is not what was asked for
        raise MissingDependencyError(f"{path}: ONNX Runtime could not start {', '.join(dropped)} here (the session "
                                     f"runs on {', '.join(session.get_providers())}); see ONNX Runtime's log above")
    return session


def trt_fp16_enabled(providers: Sequence[str], options: dict[str, dict[str, str]]) -> bool:
    """Whether a session whose ``InferenceSession.get_providers()`` / ``get_provider_options()``
    are ``providers`` / ``options`` runs on TensorRT with fp16 allowed (the options are strings:
    ``trt_fp16_enable`` is ``"1"`` or ``"0"``)."""
    if not providers or providers[0] != "TensorrtExecutionProvider":
        return False
    return options.get("TensorrtExecutionProvider", {}).get("trt_fp16_enable", "0").lower() not in ("0", "false", "")


def open_session(path: Path, session_options: ort.SessionOptions | None, providers: list[Any]) -> ort.InferenceSession:
    """``ort.InferenceSession`` on ``path``; a file it cannot load (truncated, external data missing,
    ...) is a BadInputError naming the file with ONNX Runtime's reason (every backend on ONNX Runtime)."""
    try:
        return ort.InferenceSession(str(path), session_options, providers=providers)
    except Exception as e:  # ONNX Runtime's own classes (InvalidProtobuf, Fail, ...) derive from Exception only
        raise BadInputError(f"{path}: ONNX Runtime cannot load this file ({load_error(e)}); is it a complete "
                            f"ONNX file written by `ddpm-export onnx`, with its external data beside it?") from e


def _provider_name(provider: Any) -> str:
    return provider if isinstance(provider, str) else provider[0]


def check_providers(providers: Any) -> list[Any]:
    """``providers`` as ONNX Runtime takes them (a list of names or ``(name, options)`` pairs),
    each available in this onnxruntime; else WrongTypeError, BadInputError (an unknown name) or
    MissingDependencyError (a provider this onnxruntime package lacks, e.g. CUDA in the CPU build)."""
    if isinstance(providers, (str, bytes)) or not isinstance(providers, (list, tuple)) or not providers:
        raise WrongTypeError(f"providers must be a non-empty list of execution provider names, e.g. "
                             f"['CPUExecutionProvider'], got {providers!r}")
    available = ort.get_available_providers()
    for provider in providers:
        pair = isinstance(provider, tuple) and len(provider) == 2 and isinstance(provider[1], dict)
        if not (isinstance(provider, str) or (pair and isinstance(provider[0], str))):
            raise WrongTypeError(f"providers: each is a name or a (name, options dict) pair, got {provider!r}")
        name = _provider_name(provider)
        if name not in ort.get_all_providers():
            raise BadInputError(f"providers: {name!r} is not an ONNX Runtime execution provider; available here: "
                                f"{', '.join(available)}")
        if name not in available:
            raise MissingDependencyError(f"providers: {name} is not in this onnxruntime package (it has "
                                         f"{', '.join(available)}); e.g. CUDAExecutionProvider needs onnxruntime-gpu: "
                                         f"{ort_gpu_hint()}")
    return list(providers)


#: an exception's C++ source location and function (``/onnxruntime_src/.../bfc_arena.cc:360 void*
#: onnxruntime::BFCArena::AllocateRawInternal(size_t, bool, onnxruntime::Stream*) ``)
_CPP_LOCATION = re.compile(r"^\S+:\d+ (?:[^()]*onnxruntime::[^()]*\((?:[^()]|\([^()]*\))*\)(?: const)?"
                           r"(?: \[with [^\]]*\])? )?")


def run_error(error: BaseException) -> str:
    """What an ONNX Runtime run error says failed, on one line, without its C++ source location:
    the node and its status message (after a failed check, the sentence after it: ``... was false.
    The input tensor cannot be reshaped ...``)."""
    text = without_ort_status(" ".join(str(error).split()) or type(error).__name__)
    node = re.search(r"while running (\S+) node\. Name:'([^']*)' Status Message: ", text)
    where = f"{node.group(1)} node{' ' + repr(node.group(2)) if node.group(2) else ''}: " if node else ""
    detail = text[node.end():] if node else text
    detail = detail.split(" was false. ", 1)[1] if " was false. " in detail else _CPP_LOCATION.sub("", detail)
    return (where + detail.split(" Stacktrace: ", 1)[0])[:300]


def session_options_for(threads: int | None, session_options: ort.SessionOptions | None = None) -> ort.SessionOptions:
    """``session_options`` (or new ones) with ``intra_op_num_threads = threads`` and
    ``inter_op_num_threads = 1`` (the U-Net is one chain of nodes; nothing runs in parallel
    between them); ``threads=None`` leaves ONNX Runtime's default (one per physical core)."""
    if session_options is not None and not isinstance(session_options, ort.SessionOptions):
        raise WrongTypeError(f"session_options must be an onnxruntime.SessionOptions, "
                             f"got {type(session_options).__name__}")
    opts = session_options if session_options is not None else ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    return opts
