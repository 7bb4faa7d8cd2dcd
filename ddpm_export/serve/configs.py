"""The two models of a Triton repository as ``config.pbtxt`` messages, from the ExportSpec (torch-free).

``unet``: the exported U-Net with the graph's interface (names and dims without the batch axis),
``max_batch_size`` = the spec's ``max_batch`` and ``dynamic_batching``, so Triton merges the
per-step calls of concurrent sampling loops into one batch (every call is already within
``[min_batch, max_batch]``, so a merged batch is too). The inputs are read off the ExportSpec
(names, dtypes, shapes, dynamic axes; the conditioning input from its contract descriptor).
``[B]`` inputs (``t``, class ids) need at least one dim in Triton, so they are declared
``dims: [1]`` with ``reshape { shape: [] }``: clients send ``[B, 1]``, the model sees ``[B]``.

``sampler``: the Python-backend model that runs the sampling loop and calls ``unet`` per step
(see :mod:`ddpm_export.serve.triton_models`); no batching of its own (``max_batch_size: 0``),
``instances`` copies sample that many requests at once.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ddpm_export._version import __version__
from ddpm_export.checks import Registry
from ddpm_export.contract.spec import OUT_NAME, ExportSpec
from ddpm_export.diffusion.config import MAX_TRAIN_TIMESTEPS
from ddpm_export.errors import BadInputError
from ddpm_export.serve.pbtxt import Enum
from ddpm_export.threads import check_threads

__all__ = ["DEFAULT_MAX_IMAGE_STEPS", "LIMITS", "SAMPLER", "UNET", "UNET_BACKENDS", "UNetTarget", "batch_only_inputs",
           "check_unet_threads", "sampler_config", "unet_config"]

#: the range of each repository setting: Triton reads ``count`` as int32 and the queue delay as
#: uint64, and a larger value than these serves no one (a Python process per sampler instance; a
#: 10 s wait to batch; 65536 images of a request held in memory at once; 65536 images of the most
#: steps any schedule has, MAX_TRAIN_TIMESTEPS)
LIMITS: dict[str, tuple[int, int]] = {"instances": (1, 1024), "max_queue_delay_us": (0, 10_000_000),
                                      "max_images": (1, 65536), "max_image_steps": (1, 65536 * MAX_TRAIN_TIMESTEPS)}
#: the default cap on num_images x steps of one request: 16 images of 1000 steps (DDPM's full
#: loop over a batch), 327 of 50, 1024 of 16. Served by the CPU tritonserver (`--unet-backend
#: python`, one sampler instance, 2 AMD EPYC cores shared with other work), the digits model took
#: 5.3 ms per image-step unguided and 11 ms guided, so the longest request ran 1.5-3 minutes
#: (1024 images x 1000 steps: 1.5-3 hours); a larger model takes longer per image-step
#: (ddpm-cifar10 ~30x): lower it there
DEFAULT_MAX_IMAGE_STEPS = 16384

UNET, SAMPLER = "unet", "sampler"
#: the sampler's output and the request inputs it reads (the optional ones may be left out).
IMAGES = "images"
REQUIRED_INPUTS = ("seed", "num_images", "steps")
OPTIONAL_INPUTS = ("sampler", "eta", "guidance_scale")
#: config parameters the sampler reads.
VERSION_PARAM, UNET_PARAM, MAX_IMAGES_PARAM = "ddpm_export_version", "unet_model", "max_images_per_request"
#: num_images x steps at most (absent in repositories written before it: no cap)
MAX_IMAGE_STEPS_PARAM = "max_image_steps_per_request"
#: the unet's ONNX Runtime intra-op threads (Triton's ONNX Runtime backend's key; the python unet reads it too)
THREADS_PARAM = "intra_op_thread_count"


@dataclasses.dataclass(frozen=True)
class UNetTarget:
    """How one ``--unet-backend`` appears in ``config.pbtxt``: ``field: value`` (``platform`` or
    ``backend``), the model file in ``unet/1/``, ``default_model_filename`` where the backend's
    own default differs from it, the instance kind (None: Triton's default, one instance per
    GPU or one on the CPU), the parameter that sets the U-Net's CPU threads (``ddpm-export
    --threads``; None: it runs on the GPU and takes none) and the backend's own ``parameters``."""

    field: str
    value: str
    filename: str
    default_model_filename: str | None
    kind: str | None
    threads_parameter: str | None
    parameters: tuple[tuple[str, str], ...] = ()


#: ``--unet-backend`` name -> its target; an unknown name is refused listing the choices.
UNET_BACKENDS: Registry[UNetTarget] = Registry("unet_backend", {
    # Triton's ONNX Runtime backend: intra_op_thread_count (inter-op threads idle: sequential execution)
    "onnxruntime": UNetTarget("platform", "onnxruntime_onnx", "model.onnx", None, None, THREADS_PARAM),
    "tensorrt": UNetTarget("platform", "tensorrt_plan", "model.plan", None, "KIND_GPU", None),
    # its default file is IR; it fixes the model's batch at max_batch_size and refuses a smaller batch
    # ("expected requests with batch size ..."), the sampler's calls of fewer images, unless padding it
    "openvino": UNetTarget("backend", "openvino", "model.onnx", "model.onnx", "KIND_CPU", "INFERENCE_NUM_THREADS",
                           (("ENABLE_BATCH_PADDING", "YES"),)),
    # our ONNX Runtime backend in-process; Triton loads unet/1/model.py, which opens model.onnx
    "python": UNetTarget("backend", "python", "model.onnx", None, "KIND_CPU", THREADS_PARAM),
})
#: numpy dtype name of a graph input -> Triton's data type
_DATA_TYPES = {"float32": "TYPE_FP32", "int64": "TYPE_INT64"}


def _tensor(name: str, dtype: str, dims: list[int], *, batch_only: bool = False,
            optional: bool = False) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "data_type": Enum(dtype), "dims": dims}
    if batch_only:  # a [B] tensor: declared [1], reshaped to [] (see the module doc)
        entry["reshape"] = {"shape": []}
    if optional:
        entry["optional"] = True
    return entry


def batch_only_inputs(spec: ExportSpec) -> tuple[str, ...]:
    """The graph inputs shaped ``[B]`` (``t``, class ids): ``[B, 1]`` on the wire."""
    return tuple(name for name, shape in spec.input_shapes(1).items() if len(shape) == 1)


def _dims(spec: ExportSpec, name: str, shape: tuple[int, ...]) -> list[int]:
    """``shape`` with its dynamic axes (from the spec and the conditioning descriptor) as -1."""
    axes = spec.dynamic_axes.get(name, {})
    return [-1 if axis in axes else size for axis, size in enumerate(shape)]


def unet_inputs(spec: ExportSpec) -> list[dict[str, Any]]:
    """The graph's inputs without the batch axis."""
    shapes, dtypes, batch_only = spec.input_shapes(1), spec.input_dtypes(), batch_only_inputs(spec)
    return [_tensor(name, _DATA_TYPES[dtypes[name]], _dims(spec, name, shapes[name])[1:] or [1],
                    batch_only=name in batch_only)
            for name in spec.input_names]


def unet_config(spec: ExportSpec, backend: str, *, max_queue_delay_us: int, threads: int | None) -> dict[str, Any]:
    """``unet/config.pbtxt`` for ``backend`` (a key of :data:`UNET_BACKENDS`); ``threads``: its CPU
    thread count (None: the engine's default, every core), for a target that takes one."""
    target = UNET_BACKENDS[backend]
    s = spec.sample_size
    config: dict[str, Any] = {
        "name": UNET,
        target.field: target.value,
        "max_batch_size": spec.max_batch,
        "input": unet_inputs(spec),
        "output": [_tensor(OUT_NAME, "TYPE_FP32", [spec.out_channels, s, s])],
        "dynamic_batching": {
            "preferred_batch_size": sorted({spec.opt_batch, spec.max_batch}),
            "max_queue_delay_microseconds": max_queue_delay_us,
        },
    }
    if target.default_model_filename is not None:
        config["default_model_filename"] = target.default_model_filename
    if target.kind is not None:
        config["instance_group"] = [{"count": 1, "kind": Enum(target.kind)}]
    parameters = list(target.parameters)
    if threads is not None:
        check_unet_threads(backend, threads)
        parameters.append((str(target.threads_parameter), str(threads)))
    if parameters:
        config["parameters"] = [{"key": k, "value": {"string_value": v}} for k, v in parameters]
    return config


def check_unet_threads(backend: str, threads: int) -> None:
    """Refuse a thread count that is no int in ``[1, MAX_THREADS]``, or one for a U-Net that runs
    on the GPU (``tensorrt``: it would be ignored without a word)."""
    check_threads("threads", threads)
    if UNET_BACKENDS[backend].threads_parameter is None:
        takes = ", ".join(name for name, target in UNET_BACKENDS.items() if target.threads_parameter is not None)
        raise BadInputError(f"threads={threads} (--threads): a {backend} unet runs on the GPU and takes no CPU "
                            f"thread count; it applies to --unet-backend {takes}")


def sampler_inputs(spec: ExportSpec) -> list[dict[str, Any]]:
    """``seed``, ``num_images``, ``steps`` INT64 [1]; optional ``sampler`` BYTES [1], ``eta`` and
    ``guidance_scale`` FP32 [1]; ``class_labels`` INT64 [n] (optional) for class-conditional
    models, ``context`` FP32 [n, L, D] (required) for context-conditioned ones."""
    inputs = [_tensor(name, "TYPE_INT64", [1]) for name in REQUIRED_INPUTS]
    inputs += [_tensor("sampler", "TYPE_STRING", [1], optional=True),
               _tensor("eta", "TYPE_FP32", [1], optional=True),
               _tensor("guidance_scale", "TYPE_FP32", [1], optional=True)]
    cond = spec.conditioning
    if cond.input_name is not None:  # [n, ...] as the graph takes it; optional where the model has a default
        shape = cond.shape(spec, 1, None)[cond.input_name]
        inputs.append(_tensor(cond.input_name, _DATA_TYPES[str(cond.dtype)], _dims(spec, cond.input_name, shape),
                              optional=cond.has_default_input))
    return inputs


def sampler_config(spec: ExportSpec, *, instances: int, max_images: int, max_image_steps: int) -> dict[str, Any]:
    """``sampler/config.pbtxt``: ``instances`` CPU instances of the Python-backend sampling loop."""
    s = spec.sample_size
    params = {VERSION_PARAM: __version__, UNET_PARAM: UNET, MAX_IMAGES_PARAM: str(max_images),
              MAX_IMAGE_STEPS_PARAM: str(max_image_steps)}
    return {
        "name": SAMPLER,
        "backend": "python",
        "max_batch_size": 0,
        "input": sampler_inputs(spec),
        "output": [_tensor(IMAGES, "TYPE_FP32", [-1, spec.in_channels, s, s])],
        "instance_group": [{"count": instances, "kind": Enum("KIND_CPU")}],
        "parameters": [{"key": k, "value": {"string_value": v}} for k, v in params.items()],
    }
