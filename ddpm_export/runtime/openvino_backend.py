"""OpenVINO as a sampling backend on the CPU (implements :class:`ddpm_export.diffusion.Backend`).

OpenVINO reads the exported ONNX file itself (no conversion step, no ``onnx`` package) and
compiles it for the CPU plugin with:

- ``INFERENCE_NUM_THREADS = threads``;
- ``INFERENCE_PRECISION_HINT``: ``"f32"`` keeps float32 arithmetic; ``"bf16"`` runs
  convolutions and matmuls in bfloat16 (8-bit mantissa, relative rounding 2^-9 per operation)
  on CPUs with AVX-512 BF16 or AMX; ``None`` leaves the plugin's default for this CPU, which is
  bf16 on some CPUs (read it back from :attr:`OpenVinoBackend.inference_precision`);
- ``PERFORMANCE_HINT = LATENCY`` (one stream: the sampler makes one call at a time);
- **static shapes, one compiled model per batch size** (and context length, for a
  context-conditioned model; compiled on first use, the export's ``opt_batch`` (and
  ``opt_context``) at load): the file's batch axis is dynamic, and the CPU plugin's dynamic-shape
  kernels cost 1.1-1.2x per step at batch 1 on ddpm-cifar10 (README, "Speed"); on a dynamic
  context axis they gave wrong outputs at every length >= 16 once a call at length 1 had run
  (max abs 0.6-1.1 in f32, NaN in bf16; OpenVINO 2026.4). A sampling run uses one or two
  sizes (its chunk and the remainder), each compiled once. The
  :data:`MAX_COMPILED` most recently used sizes are kept; a call at another size compiles it
  (0.6-0.8 s for the digits model here) and drops the least recently used one, so an app that
  samples many sizes holds bounded memory (each compiled size holds its own copy of the
  weights: ~23 MiB for digits, ~100 MiB for ddpm-cifar10). A thread's infer requests keep
  their compiled models alive; each call drops the calling thread's requests for sizes the
  cache has dropped, so the bound is the cache's plus what idle threads last used (a thread
  that never calls again keeps its requests until it ends). A size is compiled outside the
  lock every call takes, once (other threads asking for it wait; calls at other sizes go on),
  and a thread whose size other threads pushed out of the cache mid-run takes it back with
  the model its request holds instead of compiling it again. With guidance a call of ``n``
  images runs at batch ``2n``.

A QDQ int8 file (``ddpm-export onnx --precision int8``) runs through the same class: OpenVINO
turns the QuantizeLinear/DequantizeLinear pairs into int8 kernels (VNNI where present).

An ``InferRequest`` is not thread-safe, so each thread gets its own per batch size
(``threading.local``); the compiled models are shared, so one backend (and one Pipeline) serves many threads.
"""

from __future__ import annotations

import concurrent.futures
import threading
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ddpm_export.contract.spec import OUT_NAME, X_NAME, ExportSpec, feeds_for
from ddpm_export.errors import BadInputError, EngineError, InputNotFoundError, MissingDependencyError
from ddpm_export.runtime.integrity import check_graph

__all__ = ["MAX_COMPILED", "OpenVinoBackend", "require_openvino"]

#: shapes (batch size, context length) kept compiled at once (least recently used dropped first; see the
#: module docstring)
MAX_COMPILED = 4

#: what a compiled model is fixed to: (batch, context length; None for a model without a context)
Shape = tuple[int, int | None]


def require_openvino() -> Any:
    """The ``openvino`` module, or MissingDependencyError saying how to install it: not installed, or
    installed but failing to import (a shared library it loads missing: its error kept, since
    installing the extra again only answers 'already satisfied')."""
    install = "pip install 'ddpm-export[openvino]'"
    try:
        import openvino
    except (ImportError, OSError) as e:
        if isinstance(e, ModuleNotFoundError) and e.name == "openvino":
            raise MissingDependencyError(f"the openvino backend needs OpenVINO: {install}") from None
        raise MissingDependencyError(f"the openvino backend: the 'openvino' package is installed but fails to "
                                     f"import ({type(e).__name__}: {e}); reinstall it: pip uninstall -y openvino "
                                     f"&& {install}") from e
    return openvino


class OpenVinoBackend:
    """``backend(x_t [B,C,H,W] f32, t [B] i64, cond) -> model output [B,C,H,W] f32`` on OpenVINO's CPU plugin.

    Every call is checked against the :class:`ExportSpec` before it reaches the compiled model.

    Args:
        path: the ONNX file.
        spec: its export spec (from the metadata).
        threads: ``INFERENCE_NUM_THREADS`` (None: the plugin's default, one per physical core).
        inference_precision: ``"f32"``, ``"bf16"`` or None (the plugin's default for this CPU).
    """

    def __init__(self, path: str | Path, spec: ExportSpec, *, threads: int | None = None,
                 inference_precision: str | None = None) -> None:
        ov = require_openvino()
        path = Path(path)
        if not path.is_file():
            raise InputNotFoundError(f"{path}: no such ONNX file", path)
        core = ov.Core()
        try:
            model = core.read_model(str(path))
        except RuntimeError as e:  # OpenVINO raises RuntimeError for every read failure
            raise BadInputError(f"{path}: OpenVINO cannot read this file ({_engine_message(e)})") from e
        # the rules ONNX Runtime's backend applies: a graph OpenVINO would reshape or convert silently is refused too
        check_graph(_graph_args(model.inputs), _graph_args(model.outputs), spec, source=str(path))
        outputs = [port.get_any_name() for port in model.outputs]
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if inference_precision is not None:
            config["INFERENCE_PRECISION_HINT"] = inference_precision
        self.spec = spec
        self.output_index = outputs.index(OUT_NAME)
        self._core, self._model, self._config, self._path = core, model, config, path
        self._compiled: dict[Shape, Any] = {}  # shape -> compiled model, least recently used first
        self._pending: dict[Shape, concurrent.futures.Future[Any]] = {}  # shape -> its compilation under way
        self._lock = threading.Lock()
        self._closed = False
        compiled = self._compiled_for(self._shape(spec.sample_inputs(spec.opt_batch)))
        self.threads = int(compiled.get_property("INFERENCE_NUM_THREADS"))
        #: the precision OpenVINO actually computes in ("f32" or "bf16"), whatever was asked for
        self.inference_precision = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
        self._local = threading.local()

    def _shape(self, feeds: dict[str, np.ndarray]) -> Shape:
        """The shape a call with ``feeds`` runs at: its batch and context length."""
        return int(feeds[X_NAME].shape[0]), self.spec.conditioning.length(feeds)

    def _compiled_for(self, batch: Shape) -> Any:
        """The model compiled with every input's batch axis (and context length) fixed to ``batch``:
        kept for the :data:`MAX_COMPILED` most recently used shapes. A shape is compiled outside the
        lock (calls at the shapes already compiled go on meanwhile), once: other threads asking for
        it wait."""
        with self._lock:
            self._check_open()
            compiled = self._compiled.get(batch)
            if compiled is not None:
                self._keep(batch, compiled)  # now the most recently used
                return compiled
            pending, mine = self._pending.get(batch), batch not in self._pending
            if mine:
                pending = self._pending[batch] = concurrent.futures.Future()
        if not mine:
            return pending.result()  # the compiling thread's model, or its error
        try:
            compiled = self._compile(batch)
        except BaseException as e:
            with self._lock:
                del self._pending[batch]
            pending.set_exception(e)
            raise
        with self._lock:
            del self._pending[batch]
            if not self._closed:  # closed meanwhile: this call runs on it, the cache stays empty
                self._keep(batch, compiled)
        pending.set_result(compiled)
        return compiled

    def _compile(self, batch: Shape) -> Any:
        model = self._model  # None once closed (by another thread since this call began)
        if model is None:
            self._check_open()
        model = model.clone()
        model.reshape({name: list(shape) for name, shape in self.spec.input_shapes(*batch).items()})
        try:
            return self._core.compile_model(model, "CPU", self._config)
        except RuntimeError as e:
            raise BadInputError(f"{self._path}: OpenVINO cannot compile this file at {_describe(batch)} "
                                f"({_engine_message(e)})") from e

    def _keep(self, batch: Shape, compiled: Any) -> None:
        """``compiled`` as the most recently used model of ``batch``, the least recently used
        dropped beyond :data:`MAX_COMPILED` (call with the lock held)."""
        self._compiled.pop(batch, None)
        while len(self._compiled) >= MAX_COMPILED:
            del self._compiled[next(iter(self._compiled))]
        self._compiled[batch] = compiled

    def _request(self, batch: Shape) -> Any:
        """This thread's infer request at ``batch``. A size the cache dropped while this thread
        still holds a request for it (other threads' sizes pushed it out mid-run) is taken back
        with its model, not compiled again; a size compiled anew by another thread meanwhile
        replaces the request."""
        requests = getattr(self._local, "requests", None)  # threading.local: absent until this thread's first call
        if requests is None:
            requests = self._local.requests = {}
        owner, request = requests.pop(batch, (None, None))
        if owner is None:
            compiled = self._compiled_for(batch)
        else:
            with self._lock:
                self._check_open()
                compiled = self._compiled.get(batch, owner)
                self._keep(batch, compiled)
        if owner is not compiled:
            request = compiled.create_infer_request()
        requests[batch] = (compiled, request)
        with self._lock:  # a request keeps its compiled model alive: drop those the cache has dropped
            live = {id(c) for c in self._compiled.values()}
        for size in [b for b, (owner, _) in requests.items() if id(owner) not in live and b != batch]:
            del requests[size]  # (not this call's: another thread may have pushed it out since)
        return request

    def __call__(self, x_t: np.ndarray, t: np.ndarray, cond: np.ndarray | None) -> np.ndarray:
        feeds = feeds_for(self.spec, x_t, t, cond)
        self.spec.check_inputs(feeds)
        self._check_open()
        shape = self._shape(feeds)
        request = self._request(shape)
        try:
            request.infer(feeds)
        except RuntimeError as e:
            raise EngineError(f"{self._path}: OpenVINO failed on a model call at {_describe(shape)} "
                              f"({_engine_message(e)})") from e
        # the request reuses its output buffer on the next call: hand out a copy
        return np.array(request.get_output_tensor(self.output_index).data, dtype=np.float32, copy=True)

    def _check_open(self) -> None:
        """BadInputError once :meth:`close` has run (also for a call that began before it)."""
        if self._closed:
            raise BadInputError(f"{self._path}: this OpenVINO backend is closed; load the file again")

    def close(self) -> None:
        """Drop the compiled models and every thread's infer requests (their memory, a copy of the
        weights per batch size); idempotent. A call after it raises BadInputError."""
        with self._lock:
            self._closed = True
            self._compiled.clear()
            self._model = None  # the model read from the file (its weights)
        self._local = threading.local()  # the requests of every thread go with the old one


class _GraphArg(NamedTuple):
    """An OpenVINO port as :func:`~ddpm_export.runtime.integrity.check_graph` reads ONNX Runtime's ``NodeArg``."""

    name: str
    type: str
    shape: list[int | str]


#: OpenVINO's element type names -> ONNX Runtime's
_ORT_TYPE_NAMES = {"f32": "tensor(float)", "i64": "tensor(int64)", "f16": "tensor(float16)"}


def _graph_args(ports: Any) -> list[_GraphArg]:
    """``ports`` (a model's inputs or outputs) with ONNX Runtime's type names and dims: an int where
    fixed, ``"?"`` where dynamic (a dynamic rank: no dims)."""
    args = []
    for port in ports:
        kind = port.get_element_type().get_type_name()
        shape = port.get_partial_shape()
        dims = [d.get_length() if d.is_static else "?" for d in shape] if shape.rank.is_static else []
        args.append(_GraphArg(port.get_any_name(), _ORT_TYPE_NAMES.get(kind, f"tensor({kind})"), dims))
    return args


def _describe(shape: Shape) -> str:
    """``"batch 4"``, or ``"batch 4, context length 8"``."""
    batch, length = shape
    return f"batch {batch}" if length is None else f"batch {batch}, context length {length}"


def _engine_message(error: BaseException) -> str:
    """What an OpenVINO error says failed, on one line: its summary when it has one (a conversion
    failure lists the operators), else its lines without the C++ source locations."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if "Summary:" in lines:
        lines = lines[lines.index("Summary:") + 1:]
    useful = [line.lstrip("- ") for line in lines if not line.startswith(("Exception from", "Check '"))]
    return "; ".join(useful or [type(error).__name__])[:300]
