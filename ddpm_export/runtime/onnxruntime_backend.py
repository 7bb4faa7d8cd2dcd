"""ONNX Runtime as a sampling backend (implements :class:`ddpm_export.diffusion.Backend`).

One ``InferenceSession`` per backend; ``InferenceSession.run`` is thread-safe and returns fresh
arrays, so one backend (and one :class:`~ddpm_export.runtime.Pipeline`) serves many threads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnxruntime as ort

from ddpm_export.contract.spec import OUT_NAME, ExportSpec, feeds_for
from ddpm_export.errors import BadInputError, InputNotFoundError
from ddpm_export.runtime.integrity import check_graph
from ddpm_export.threads import get_threads

__all__ = ["DEFAULT_PROVIDERS", "OnnxRuntimeBackend", "create_session", "session_options_for"]

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
        self.session = session
        self.spec = spec

    @classmethod
    def from_path(cls, path: str | Path, spec: ExportSpec, *, providers: Sequence[Any] | None = None,
                  session_options: ort.SessionOptions | None = None) -> "OnnxRuntimeBackend":
        return cls(create_session(path, providers=providers, session_options=session_options), spec, source=str(path))

    def __call__(self, x_t: np.ndarray, t: np.ndarray, cond: np.ndarray | None) -> np.ndarray:
        feeds = feeds_for(self.spec, x_t, t, cond)
        self.spec.check_inputs(feeds)
        return self.session.run([OUT_NAME], feeds)[0]


def create_session(path: str | Path, *, providers: Sequence[Any] | None = None,
                   session_options: ort.SessionOptions | None = None) -> ort.InferenceSession:
    """An ``InferenceSession`` on ``path`` with ``providers`` (default: CPU)."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"{path}: no such ONNX file")
    threads = get_threads()
    if session_options is None and threads is not None:  # `ddpm-export --threads N`
        session_options = session_options_for(threads)
    try:
        return ort.InferenceSession(str(path), session_options,
                                    providers=list(providers) if providers is not None else list(DEFAULT_PROVIDERS))
    except Exception as e:  # ONNX Runtime's own classes (InvalidProtobuf, Fail, ...) derive from Exception only
        raise BadInputError(f"{path}: ONNX Runtime cannot load this file ({load_error(e)}); is it a complete "
                            f"ONNX file written by `ddpm-export onnx`, with its external data beside it?") from e


def load_error(error: BaseException) -> str:
    """The first line of an ONNX Runtime load error, without its ``[ONNXRuntimeError] : 7 :`` prefix."""
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return text.rsplit("] : ", 1)[-1].split(" : ", 1)[-1][:300]


def session_options_for(threads: int | None, session_options: ort.SessionOptions | None = None) -> ort.SessionOptions:
    """``session_options`` (or new ones) with ``intra_op_num_threads = threads`` and
    ``inter_op_num_threads = 1`` (the U-Net is one chain of nodes; nothing runs in parallel
    between them); ``threads=None`` leaves ONNX Runtime's default (one per physical core)."""
    opts = session_options if session_options is not None else ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    return opts
