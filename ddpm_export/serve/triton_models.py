"""The Python-backend models of a generated Triton repository (torch-free).

Each generated ``model.py`` is one line, ``from ddpm_export.serve.triton_models import ... as
TritonPythonModel``, so the server's Python needs ``ddpm-export`` installed (the repository holds
everything else). ``triton_python_backend_utils`` exists only inside Triton's Python-backend stub;
it is imported in ``initialize``, so this module also imports outside a server.

* :class:`SamplerModel` -- the sampling loop. A request is validated into a
  :class:`~ddpm_export.runtime.SampleRequest` and run by :meth:`Pipeline.run` over a
  :class:`BlsBackend`, so it is exactly :meth:`Pipeline.sample` (same chunking, same noise draws
  from :func:`ddpm_export.diffusion.sample`) with every U-Net call sent to the ``unet`` model.
* :class:`UNetModel` -- the ``--unet-backend python`` U-Net: our ONNX Runtime backend on
  ``model.onnx``, executing each dynamically batched group of requests as one batch.

A bad request, or a failure while serving it, is answered with a ``TritonError`` for that
request; the model stays loaded. A request its gRPC client gave up on (a deadline, a closed
connection) is dropped before its next U-Net call, not run to the end (``is_cancelled``); an HTTP
client's timeout or closed connection does not reach the model (Triton 2.51), which finishes it.

Triton's Python-backend stub converts tensors with pybind11's numpy support; the stub of
``nvidia-pytriton`` 0.7.0 (Triton 2.51) reads numpy 1's array layout, so its server's Python
needs ``numpy<2`` (see :mod:`ddpm_export.serve.local_server`). Both models try a tensor round
trip when they load (:func:`check_stub_numpy`) and refuse to load, saying so, when the stub
garbles it -- rather than load and answer every request wrongly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ddpm_export._version import __version__
from ddpm_export.contract.info import ModelInfo
from ddpm_export.contract.spec import OUT_NAME, T_NAME, X_NAME, ExportSpec, feeds_for
from ddpm_export.errors import BadInputError, IntegrityError
from ddpm_export.jsonio import parse_json
from ddpm_export.runtime.pipeline import Pipeline
from ddpm_export.serve.configs import (IMAGES, MAX_IMAGE_STEPS_PARAM, MAX_IMAGES_PARAM, THREADS_PARAM, UNET_PARAM,
                                      VERSION_PARAM, batch_only_inputs)
from ddpm_export.serve.requests import RequestError, parse_request

__all__ = ["INFO_FILE", "BlsBackend", "RequestCancelled", "SamplerModel", "UNetCallError", "UNetModel",
           "check_stub_numpy", "unet_session"]

#: the exported file's metadata_props, beside the sampler's model.py.
INFO_FILE = "model_info.json"


class UNetCallError(RuntimeError):
    """The ``unet`` model answered a BLS request with an error."""


def _never() -> bool:
    return False


class RequestCancelled(RuntimeError):
    """The client gave up on the request being served."""


def check_stub_numpy(pb_utils: Any) -> None:
    """RuntimeError (the model then fails to load, with this message in the server log) when the
    stub does not hand numpy arrays through intact: its pybind11 reads numpy 1's layout.

    Under numpy 2 a probe goes through the stub's own buffer (``Tensor.from_dlpack`` then
    ``as_numpy``): the nvidia-pytriton 0.7.0 stub reads ``[1, 2, 3, 4]`` back as ``[1, 1, 1, 1]``
    (a tensor made by ``Tensor(name, array)`` only hands back the Python object, so it cannot
    tell). Under numpy 1 nothing is probed: that stub reads it right, and ``from_dlpack`` of a
    numpy 1 array fails there."""
    if int(np.__version__.split(".")[0]) < 2:
        return
    probe = np.arange(1, 5, dtype=np.float32)
    back = np.asarray(pb_utils.Tensor.from_dlpack("probe", probe).as_numpy())
    if back.shape != probe.shape or not np.array_equal(back, probe):
        raise RuntimeError(f"Triton's Python-backend stub garbles the arrays of numpy {np.__version__} (a probe "
                           f"{probe.tolist()} came back as {back.tolist()}): it was built for numpy 1; start the "
                           f"server with numpy<2 first on its Python's path (`pip install --target DIR --no-deps "
                           f"'numpy<2'`; LocalServer(pythonpath=[DIR]); ./dev makes .triton-site/)")


class BlsBackend:
    """A :class:`ddpm_export.diffusion.Backend` that calls a Triton model through BLS.

    ``backend(x_t [B,C,H,W] f32, t [B] i64, cond)`` sends one ``InferenceRequest`` to
    ``model_name`` (``t`` and class ids as ``[B, 1]``) and returns a copy of ``model_output``, asked
    for in CPU memory (Triton 23.04+: ``PreferredMemory``).
    ``cancelled`` is asked before each call: the request being served, given up by its client,
    raises RequestCancelled instead.
    """

    def __init__(self, pb_utils: Any, spec: ExportSpec, model_name: str) -> None:
        self.pb = pb_utils
        self.spec = spec
        self.model_name = model_name
        self.batch_only = batch_only_inputs(spec)
        self.cancelled: Callable[[], bool] = _never

    def __call__(self, x_t: np.ndarray, t: np.ndarray, cond: np.ndarray | None) -> np.ndarray:
        if self.cancelled():
            raise RequestCancelled("the client cancelled the request")
        feeds = feeds_for(self.spec, x_t, t, cond)
        tensors = [self.pb.Tensor(name, np.ascontiguousarray(arr.reshape(-1, 1) if name in self.batch_only else arr))
                   for name, arr in feeds.items()]
        # the output in CPU memory: by default it stays where the unet made it, and a TensorRT unet's
        # is in GPU memory, which as_numpy() refuses ("Tensor is stored in GPU")
        request = self.pb.InferenceRequest(model_name=self.model_name, inputs=tensors,
                                           requested_output_names=[OUT_NAME],
                                           preferred_memory=self.pb.PreferredMemory(self.pb.TRITONSERVER_MEMORY_CPU, 0))
        response = request.exec()
        if response.has_error():
            raise UNetCallError(f"{self.model_name}: {response.error().message()}")
        # a copy: the tensor's memory goes with the response
        return np.array(self.pb.get_output_tensor_by_name(response, OUT_NAME).as_numpy(), copy=True)


def _folder(args: dict[str, str]) -> Path:
    return Path(args["model_repository"]) / args["model_version"]


def _read_info(path: Path) -> dict[str, str]:
    """The sampler's ``model_info.json`` (its ONNX file's metadata); IntegrityError naming it when it
    is not a JSON object (a key given twice included)."""
    try:
        info = parse_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise IntegrityError(f"{path}: not readable JSON ({e}); regenerate the repository with "
                             f"`ddpm-export triton`") from e
    if not isinstance(info, dict):
        raise IntegrityError(f"{path}: not a JSON object; regenerate the repository with `ddpm-export triton`")
    return info


def _parameters(args: dict[str, str]) -> dict[str, str]:
    config = json.loads(args["model_config"])
    return {key: value["string_value"] for key, value in config.get("parameters", {}).items()}


class SamplerModel:
    """The ``sampler`` model: inputs and output as in :func:`ddpm_export.serve.configs.sampler_inputs`."""

    def initialize(self, args: dict[str, str]) -> None:
        import triton_python_backend_utils as pb_utils

        check_stub_numpy(pb_utils)
        self.pb = pb_utils
        params = _parameters(args)
        if params[VERSION_PARAM] != __version__:
            raise IntegrityError(f"this repository was generated by ddpm-export {params[VERSION_PARAM]}, but the "
                                 f"server's Python has ddpm-export {__version__}; regenerate it with "
                                 f"`ddpm-export triton`")
        path = _folder(args) / INFO_FILE
        self.info = ModelInfo.from_metadata(_read_info(path), source=str(path))
        self.max_images = int(params[MAX_IMAGES_PARAM])
        steps = params.get(MAX_IMAGE_STEPS_PARAM)  # absent in a repository written before it: no cap
        self.max_image_steps = None if steps is None else int(steps)
        self.bls = BlsBackend(pb_utils, self.info.spec, params[UNET_PARAM])
        self.pipeline = Pipeline(self.bls, self.info, source=f"triton model {params[UNET_PARAM]!r}")

    def execute(self, requests: list[Any]) -> list[Any]:
        return [self._serve(request) for request in requests]

    def _serve(self, request: Any) -> Any:
        pb = self.pb
        try:
            self.bls.cancelled = request.is_cancelled  # an instance serves one request at a time
            inputs = {tensor.name(): tensor.as_numpy() for tensor in request.inputs()}
            images = self.pipeline.run(parse_request(self.info, inputs, max_images=self.max_images,
                                                      max_image_steps=self.max_image_steps))
            return pb.InferenceResponse(output_tensors=[pb.Tensor(IMAGES, images)])
        except RequestCancelled as e:
            return pb.InferenceResponse(error=pb.TritonError(str(e), pb.TritonError.CANCELLED))
        except RequestError as e:
            return pb.InferenceResponse(error=pb.TritonError(str(e), pb.TritonError.INVALID_ARG))
        except Exception as e:  # noqa: BLE001 -- answer this request, keep serving the others
            return pb.InferenceResponse(error=pb.TritonError(f"sampling failed: {type(e).__name__}: {e}"))
        finally:
            self.bls.cancelled = _never  # do not keep the request alive


def unet_session(args: dict[str, str]) -> Any:
    """The python unet's ONNX Runtime session on its ``model.onnx`` (``args``: Triton's to
    ``initialize``): the repository's thread count (``ddpm-export --threads N triton``), else
    Pipeline's default by model size (one thread for a file under SMALL_MODEL_BYTES), so that served
    and ``sample`` figures agree; the session took one thread per core there."""
    from ddpm_export.runtime.backends import default_threads
    from ddpm_export.runtime.onnxruntime_backend import create_session, session_options_for

    path = _folder(args) / "model.onnx"
    given = _parameters(args).get(THREADS_PARAM)
    threads = int(given) if given is not None else default_threads(path)
    return create_session(path, session_options=None if threads is None else session_options_for(threads))


class UNetModel:
    """The ``unet`` model of ``--unet-backend python``: ONNX Runtime on ``unet/1/model.onnx``.

    With dynamic batching Triton hands over several requests at once; each is checked against
    the ExportSpec, the good ones run as one batch (at most ``max_batch``, as Triton guarantees),
    and the output is split back per request.
    """

    def initialize(self, args: dict[str, str]) -> None:
        import triton_python_backend_utils as pb_utils

        from ddpm_export.runtime.onnxruntime_backend import OnnxRuntimeBackend

        check_stub_numpy(pb_utils)
        self.pb = pb_utils
        session = unet_session(args)
        info = ModelInfo.from_metadata(session.get_modelmeta().custom_metadata_map, source="unet/1/model.onnx")
        self.spec = info.spec
        self.batch_only = batch_only_inputs(info.spec)
        self.backend = OnnxRuntimeBackend(session, info.spec)

    def execute(self, requests: list[Any]) -> list[Any]:
        pb = self.pb
        responses: list[Any] = [None] * len(requests)
        good: list[tuple[int, dict[str, np.ndarray]]] = []
        for i, request in enumerate(requests):
            try:
                good.append((i, self._feeds(request)))
            except BadInputError as e:
                responses[i] = pb.InferenceResponse(error=pb.TritonError(str(e), pb.TritonError.INVALID_ARG))
        if good:
            try:
                outputs = self._run([feeds for _, feeds in good])
                for (i, _), out in zip(good, outputs):
                    responses[i] = pb.InferenceResponse(output_tensors=[pb.Tensor(OUT_NAME, np.ascontiguousarray(out))])
            except Exception as e:  # noqa: BLE001 -- answer the batch, keep the model alive
                for i, _ in good:
                    responses[i] = pb.InferenceResponse(error=pb.TritonError(f"unet failed: {type(e).__name__}: {e}"))
        return responses

    def _feeds(self, request: Any) -> dict[str, np.ndarray]:
        feeds = {}
        for name in self.spec.input_names:
            arr = self.pb.get_input_tensor_by_name(request, name).as_numpy()
            feeds[name] = arr.reshape(-1) if name in self.batch_only else arr
        self.spec.check_inputs(feeds)
        return feeds

    def _run(self, group: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
        sizes = [feeds[X_NAME].shape[0] for feeds in group]
        # Triton batches only requests of equal shapes beyond the batch axis (context lengths too)
        merged = group[0] if len(group) == 1 else {
            name: np.concatenate([feeds[name] for feeds in group]) for name in self.spec.input_names}
        cond_name = self.spec.conditioning.input_name
        out = self.backend(merged[X_NAME], merged[T_NAME], None if cond_name is None else merged[cond_name])
        return np.split(out, np.cumsum(sizes)[:-1])
