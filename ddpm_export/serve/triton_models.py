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
request; the model stays loaded.

Arrays cross the Python-backend boundary through DLPack (:func:`to_numpy`, :func:`from_numpy`),
not ``Tensor.as_numpy()`` / ``Tensor(name, array)``: stubs built with an older pybind11 (such as
the one in ``nvidia-pytriton`` 0.7.0, Triton 2.51) read numpy 1's array descriptors, so under
numpy 2 ``as_numpy()`` returns zero strides (every element reads as the first) and
``Tensor(name, array)`` sends no data. DLPack works with numpy 1 and 2. (That stub consumes a
numpy capsule under a name numpy's capsule destructor does not expect, which then reports a
harmless unraisable ``ValueError`` per tensor; :func:`quiet_dlpack_capsules` drops exactly those.
The memory is freed: 300 tensors of 4 MB grew the stub's RSS by 8 MB.)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ddpm_export import __version__
from ddpm_export.export.spec import CLASS_NAME, CONTEXT_NAME, OUT_NAME, T_NAME, X_NAME, ExportSpec, feeds_for
from ddpm_export.runtime.info import ModelInfo
from ddpm_export.runtime.pipeline import Pipeline
from ddpm_export.serve.configs import BYTES_INPUTS, IMAGES, MAX_IMAGES_PARAM, UNET_PARAM, VERSION_PARAM
from ddpm_export.serve.requests import RequestError, parse_request

__all__ = ["INFO_FILE", "BlsBackend", "SamplerModel", "UNetCallError", "UNetModel"]

#: the exported file's metadata_props, beside the sampler's model.py.
INFO_FILE = "model_info.json"
#: graph inputs that are [B] in the graph and [B, 1] on the wire (see serve.configs).
_BATCH_ONLY = (T_NAME, CLASS_NAME)


def quiet_dlpack_capsules() -> None:
    """Install a ``sys.unraisablehook`` that drops numpy's capsule-name complaint (see the module
    doc) and passes every other unraisable exception to the previous hook."""
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if not (unraisable.exc_type is ValueError and unraisable.object is None
                and str(unraisable.exc_value) == "PyCapsule_GetPointer called with incorrect name"):
            previous(unraisable)

    sys.unraisablehook = hook


def to_numpy(tensor: Any) -> np.ndarray:
    """A numeric ``pb_utils.Tensor`` as a numpy array of its own (a copy, so it outlives the tensor)."""
    return np.array(np.from_dlpack(tensor), copy=True)


def from_numpy(pb_utils: Any, name: str, array: np.ndarray) -> Any:
    """A ``pb_utils.Tensor`` holding a C-contiguous copy of ``array``."""
    return pb_utils.Tensor.from_dlpack(name, np.array(array, copy=True, order="C"))


class UNetCallError(RuntimeError):
    """The ``unet`` model answered a BLS request with an error."""


class BlsBackend:
    """A :class:`ddpm_export.diffusion.Backend` that calls a Triton model through BLS.

    ``backend(x_t [B,C,H,W] f32, t [B] i64, cond)`` sends one ``InferenceRequest`` to
    ``model_name`` (``t`` and class ids as ``[B, 1]``) and returns a copy of ``model_output``.
    """

    def __init__(self, pb_utils: Any, spec: ExportSpec, model_name: str) -> None:
        self.pb = pb_utils
        self.spec = spec
        self.model_name = model_name

    def __call__(self, x_t: np.ndarray, t: np.ndarray, cond: np.ndarray | None) -> np.ndarray:
        feeds = feeds_for(self.spec, x_t, t, cond)
        tensors = [from_numpy(self.pb, name, arr.reshape(-1, 1) if name in _BATCH_ONLY else arr)
                   for name, arr in feeds.items()]
        request = self.pb.InferenceRequest(model_name=self.model_name, inputs=tensors,
                                           requested_output_names=[OUT_NAME])
        response = request.exec()
        if response.has_error():
            raise UNetCallError(f"{self.model_name}: {response.error().message()}")
        return to_numpy(self.pb.get_output_tensor_by_name(response, OUT_NAME))


def _folder(args: dict[str, str]) -> Path:
    return Path(args["model_repository"]) / args["model_version"]


def _parameters(args: dict[str, str]) -> dict[str, str]:
    config = json.loads(args["model_config"])
    return {key: value["string_value"] for key, value in config.get("parameters", {}).items()}


class SamplerModel:
    """The ``sampler`` model: inputs and output as in :func:`ddpm_export.serve.configs.sampler_inputs`."""

    def initialize(self, args: dict[str, str]) -> None:
        import triton_python_backend_utils as pb_utils

        self.pb = pb_utils
        quiet_dlpack_capsules()
        params = _parameters(args)
        if params[VERSION_PARAM] != __version__:
            raise RuntimeError(f"this repository was generated by ddpm-export {params[VERSION_PARAM]}, but the "
                               f"server's Python has ddpm-export {__version__}; regenerate it with `ddpm-export triton`")
        path = _folder(args) / INFO_FILE
        self.info = ModelInfo.from_metadata(json.loads(path.read_text(encoding="utf-8")), source=str(path))
        self.max_images = int(params[MAX_IMAGES_PARAM])
        self.pipeline = Pipeline(BlsBackend(pb_utils, self.info.spec, params[UNET_PARAM]), self.info,
                                 source=f"triton model {params[UNET_PARAM]!r}")

    def execute(self, requests: list[Any]) -> list[Any]:
        return [self._serve(request) for request in requests]

    def _serve(self, request: Any) -> Any:
        pb = self.pb
        try:
            # BYTES have no DLPack form; as_numpy() reads a [1] tensor right even with zero strides
            inputs = {tensor.name(): tensor.as_numpy() if tensor.name() in BYTES_INPUTS else to_numpy(tensor)
                      for tensor in request.inputs()}
            images = self.pipeline.run(parse_request(self.info, inputs, max_images=self.max_images))
            return pb.InferenceResponse(output_tensors=[from_numpy(pb, IMAGES, images)])
        except RequestError as e:
            return pb.InferenceResponse(error=pb.TritonError(str(e), pb.TritonError.INVALID_ARG))
        except Exception as e:  # noqa: BLE001 -- answer this request, keep serving the others
            return pb.InferenceResponse(error=pb.TritonError(f"sampling failed: {type(e).__name__}: {e}"))


class UNetModel:
    """The ``unet`` model of ``--unet-backend python``: ONNX Runtime on ``unet/1/model.onnx``.

    With dynamic batching Triton hands over several requests at once; each is checked against
    the ExportSpec, the good ones run as one batch (at most ``max_batch``, as Triton guarantees),
    and the output is split back per request.
    """

    def initialize(self, args: dict[str, str]) -> None:
        import triton_python_backend_utils as pb_utils

        from ddpm_export.runtime.onnxruntime_backend import OnnxRuntimeBackend, create_session

        self.pb = pb_utils
        quiet_dlpack_capsules()
        session = create_session(_folder(args) / "model.onnx")
        info = ModelInfo.from_metadata(session.get_modelmeta().custom_metadata_map, source="unet/1/model.onnx")
        self.spec = info.spec
        self.backend = OnnxRuntimeBackend(session, info.spec)

    def execute(self, requests: list[Any]) -> list[Any]:
        pb = self.pb
        responses: list[Any] = [None] * len(requests)
        good: list[tuple[int, dict[str, np.ndarray]]] = []
        for i, request in enumerate(requests):
            try:
                good.append((i, self._feeds(request)))
            except ValueError as e:
                responses[i] = pb.InferenceResponse(error=pb.TritonError(str(e), pb.TritonError.INVALID_ARG))
        if good:
            try:
                outputs = self._run([feeds for _, feeds in good])
            except Exception as e:  # noqa: BLE001 -- answer the batch, keep the model alive
                outputs = [pb.TritonError(f"unet failed: {type(e).__name__}: {e}")] * len(good)
            for (i, _), out in zip(good, outputs):
                responses[i] = (pb.InferenceResponse(error=out) if isinstance(out, pb.TritonError)
                                else pb.InferenceResponse(output_tensors=[from_numpy(pb, OUT_NAME, out)]))
        return responses

    def _feeds(self, request: Any) -> dict[str, np.ndarray]:
        feeds = {}
        for name in self.spec.input_names:
            arr = to_numpy(self.pb.get_input_tensor_by_name(request, name))
            feeds[name] = arr.reshape(-1) if name in _BATCH_ONLY else arr
        self.spec.check_inputs(feeds)
        return feeds

    def _run(self, group: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
        sizes = [feeds[X_NAME].shape[0] for feeds in group]
        # Triton batches only requests of equal shapes beyond the batch axis (context lengths too)
        merged = group[0] if len(group) == 1 else {
            name: np.concatenate([feeds[name] for feeds in group]) for name in self.spec.input_names}
        cond = merged.get(CLASS_NAME, merged.get(CONTEXT_NAME))
        out = self.backend(merged[X_NAME], merged[T_NAME], cond)
        return np.split(out, np.cumsum(sizes)[:-1])
