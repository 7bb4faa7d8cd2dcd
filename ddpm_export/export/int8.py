"""int8: a QDQ ONNX file calibrated on the sampler's own trajectories (static quantization with
``onnxruntime.quantization``).

Calibration data are the inputs the model really sees: :func:`record_calibration_inputs` runs
the numpy DDIM loop (:func:`ddpm_export.diffusion.sample`, the loop every backend shares) on the
float32 PyTorch model and records every call's ``(x_t, t, cond)`` -- several trajectories, each
with a different number of steps so that their timesteps interleave, every class in turn and,
with classifier-free guidance, the null class in the same calls.

What is quantized: the weights per output channel (int8, symmetric) and activations per tensor
(uint8, from the calibrated min/max) at the inputs of Conv and of the linear projections. What
stays float (``nodes_to_exclude``), chosen by measurement on the digits model (README, "int8"):

- the time/class-embedding island: every node that depends on ``t`` / ``class_labels`` but not on
  ``x_t`` (sinusoid, MLP, the per-block projections) -- a few KFLOP, and the embedding of t = 937
  must stay what it is;
- the first and the last convolution: the first sees x_t, whose range swings from pure noise to
  image over the trajectory, the last writes the prediction itself, so its error is the output's;
- attention's two activation x activation MatMuls (q k^T and softmax(.) v). Its q/k/v/out
  projections are quantized: kept float they were 19% of an int8 forward at batch 1 on
  ddpm-cifar10 (ONNX Runtime profile), and quantizing them kept the quality targets (README).
Where the quantize/dequantize pairs go depends on the runtime (:func:`quantizes_outputs`, from
``--target``): ONNX Runtime fuses ``DQ -> Conv -> Q`` into one QLinearConv only when the output is
quantized too, OpenVINO runs its int8 convolutions with float outputs and is faster without.

Skip concatenations are not quantized as such (Concat is not in the quantized op types); the
convolution after one quantizes its input once. The upsampling convolutions arrive in the form of
the int8 rewrites (``ddpm_export.export.rewrites``: ``upsample-subpixel``, four 2 x 2 phase
convolutions, each quantized like any other Conv).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from ddpm_export.checks import MAX_GUIDANCE_SCALE
from ddpm_export.configbase import FrozenConfig, check, check_choice
from ddpm_export.diffusion.config import DiffusionConfig
from ddpm_export.contract.spec import T_NAME, X_NAME, ExportSpec
from ddpm_export.errors import EngineError
from ddpm_export.export.precision_policy import FLOAT_GROUPS

__all__ = ["CalibrationConfig", "FLOAT_GROUPS", "float_nodes", "quantize_int8", "quantizes_outputs",
           "record_calibration_inputs", "symmetric_activations", "untie_initializers"]

QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")
#: the largest message protobuf serialises (2 GB): a bigger graph goes to the quantizer with external data
PROTOBUF_LIMIT = 2 * 1024**3
#: images per calibration run at most (each class in turn up to it; with guidance twice the rows)
MAX_CALIBRATION_IMAGES = 32


@dataclasses.dataclass(frozen=True)
class CalibrationConfig(FrozenConfig):
    """Calibration trajectories: ``trajectories`` DDIM runs of ``steps``, ``steps + 1``, ... steps,
    ``images`` each (raised to the number of classes for class models, so every class appears,
    up to :data:`MAX_CALIBRATION_IMAGES`),
    with ``guidance_scale`` (class models with a null class: the null half is recorded too)."""

    version: int = 1
    trajectories: int = 3
    steps: int = 16
    images: int = 4
    guidance_scale: float = 1.5
    seed: int = 1234
    float_groups: tuple[str, ...] = FLOAT_GROUPS

    def validate(self) -> None:
        for name in ("trajectories", "steps", "images"):
            check(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        check(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")
        check(abs(self.guidance_scale) <= MAX_GUIDANCE_SCALE, "guidance_scale",
              f"|{self.guidance_scale}| must be <= {MAX_GUIDANCE_SCALE:g}")
        for group in self.float_groups:
            check_choice("float_groups", group, FLOAT_GROUPS)


def record_calibration_inputs(backend: Callable, spec: ExportSpec, diffusion: DiffusionConfig,
                              num_classes: int | None, null_class: int | None,
                              cfg: CalibrationConfig) -> list[dict[str, np.ndarray]]:
    """Every model call of ``cfg.trajectories`` DDIM runs of ``backend`` (the float32 model), as
    feeds of at most ``spec.max_batch`` rows each: a guided call's class and null-class rows (2 x
    the images) are split into consecutive feeds where they exceed it. Min/max calibration takes
    the extremes over all feeds, so the split changes no scale; it keeps the null class in the
    calibration at any ``--max-batch``. A run has ``cfg.images`` images, raised to the number of
    classes but at most :data:`MAX_CALIBRATION_IMAGES` (a 1000-class model would run 2000-row
    forwards and record every row of every call); trajectory k starts at class k. A model trained
    with fewer timesteps than a run's steps runs T of them (less its ``steps_offset``)."""
    from ddpm_export.diffusion import make_scheduler, sample

    calls: list[dict[str, np.ndarray]] = []

    def recording(x: np.ndarray, t: np.ndarray, c: np.ndarray | None) -> np.ndarray:
        for start in range(0, len(x), spec.max_batch):
            rows = slice(start, start + spec.max_batch)
            feeds = {X_NAME: x[rows], T_NAME: t[rows]}
            if c is not None:
                feeds[spec.conditioning.input_name] = c[rows]
            calls.append(feeds)
        return backend(x, t, c)

    n = min(max(cfg.images, num_classes or 0), MAX_CALIBRATION_IMAGES)
    guided = num_classes is not None and null_class is not None
    most = diffusion.num_train_timesteps - diffusion.steps_offset  # leading steps past it would start at t >= T
    for k in range(cfg.trajectories):
        scheduler = make_scheduler(diffusion, "ddim", num_inference_steps=min(cfg.steps + k, most))
        cond = (np.arange(k, k + n, dtype=np.int64) % num_classes) if num_classes is not None else None
        sample(recording, scheduler, (n, spec.in_channels, spec.sample_size, spec.sample_size), seed=cfg.seed + k,
               cond=cond, null_cond=np.full(n, null_class, dtype=np.int64) if guided else None,
               guidance_scale=cfg.guidance_scale if guided else 1.0)
    return calls


def float_nodes(model: onnx.ModelProto, groups: tuple[str, ...]) -> list[str]:
    """Names of the quantizable nodes kept in float for ``groups`` (subset of FLOAT_GROUPS)."""
    unknown = [g for g in groups if g not in FLOAT_GROUPS]
    if unknown:
        raise ValueError(f"float groups {unknown} are not valid; choose from: {', '.join(FLOAT_GROUPS)}")
    nodes = list(model.graph.node)
    from_x = {X_NAME}  # every tensor that depends on x_t (nodes are topologically sorted)
    for node in nodes:
        if any(i in from_x for i in node.input):
            from_x.update(node.output)
    keep: list[str] = []
    if "embedding" in groups:
        keep += [n.name for n in nodes if n.op_type in QUANTIZED_OPS and not any(i in from_x for i in n.input)]
    if "first_last_conv" in groups:
        convs = [n.name for n in nodes if n.op_type == "Conv"]
        keep += convs[:1] + convs[-1:]
    if "attention" in groups:  # q k^T and softmax(.) v: both inputs are activations; projections get quantized
        weights = {t.name for t in model.graph.initializer}
        keep += [n.name for n in nodes if n.op_type in QUANTIZED_OPS and "attention" in n.name.lower()
                 and not any(i in weights for i in n.input)]
    return sorted(set(keep))


def untie_initializers(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``proto`` in which every ``Identity`` of an initializer is replaced by its own copy
    of that initializer. The TorchScript exporter ties equal tensors (e.g. the zero-initialised
    last convolution of every residual block) through Identity nodes; quantized, one shared weight
    reaches several convolutions through ``Identity(DequantizeLinear(w))``, which OpenVINO's CPU
    plugin cannot compile ("No suitable implementations")."""
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    inits = {t.name: t for t in model.graph.initializer}
    kept = []
    for node in model.graph.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            copy = onnx.TensorProto()
            copy.CopyFrom(inits[node.input[0]])
            copy.name = node.output[0]
            model.graph.initializer.append(copy)
        else:
            kept.append(node)
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return model


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """The quantizer logs advice (pre-processing, non-initializer biases) at WARNING on the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


class _Reader:
    """An ``onnxruntime.quantization.CalibrationDataReader`` over recorded feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._it: Iterator[dict[str, np.ndarray]] = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def quantizes_outputs(target: str) -> bool:
    """Whether an int8 export for ``target`` (``--target``) also quantizes the outputs of its
    quantized ops. Measured on ddpm-cifar10 (2 threads; docs/speed-levers.md), outputs left float:

    - ONNX Runtime: 0.34-0.38x. Its QDQ fusion needs ``DQ -> Conv -> Q`` to make a QLinearConv;
      without the Q the conv runs in float on dequantized weights. So every target but openvino
      quantizes them.
    - OpenVINO: 1.04-1.05x at batch 1 (1.01-1.04x at batch 8). Its int8 convolutions write float
      anyway; a quantized output costs a requantization and u8 -> f32 reorders before the
      residual adds, GroupNorms and skip convolutions.
    """
    return target != "openvino"


def symmetric_activations(target: str) -> bool:
    """Whether an int8 export for ``target`` quantizes activations as signed int8 with zero point 0
    (TensorRT takes only symmetric signed INT8: NVIDIA's "Working with Quantized Types") rather
    than asymmetric uint8 (ONNX Runtime's and OpenVINO's fastest here; docs/speed-levers.md). Such a
    file also keeps the biases float: TensorRT's parser refuses a DequantizeLinear of an int32 tensor
    ("only activation types allowed as input to this layer"), which ONNX Runtime makes of each bias."""
    return target == "tensorrt"


def quantize_int8(proto: onnx.ModelProto, feeds: list[dict[str, np.ndarray]], *,
                  float_groups: tuple[str, ...] = FLOAT_GROUPS, quantized_outputs: bool = True,
                  symmetric: bool = False, external_above: int = PROTOBUF_LIMIT) -> onnx.ModelProto:
    """The QDQ int8 model of the float32 ``proto``, calibrated (min/max) on ``feeds``; with
    ``quantized_outputs`` False, the outputs of Conv, MatMul and Gemm stay float (:func:`quantizes_outputs`);
    with ``symmetric``, activations are signed int8 with zero point 0 and biases stay float
    (:func:`symmetric_activations`). A graph over ``external_above`` bytes is handed to the quantizer,
    and written by it, with its weights in external data files (protobuf serialises no message over 2 GB)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(_Reader, CalibrationDataReader):
        pass

    proto = untie_initializers(proto)
    exclude = float_nodes(proto, float_groups)
    external = proto.ByteSize() > external_above
    with tempfile.TemporaryDirectory(prefix="ddpm-int8-") as tmp, _quiet_quantizer():
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save_model(proto, str(src), save_as_external_data=external, all_tensors_to_one_file=True,
                        location=src.name + ".data" if external else None)
        try:
            quantize_static(str(src), str(dst), Reader(feeds), quant_format=QuantFormat.QDQ,
                            use_external_data_format=external,
                            op_types_to_quantize=list(QUANTIZED_OPS), per_channel=True,
                            activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                            weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
                            calibration_providers=["CPUExecutionProvider"],
                            extra_options=_extra_options(quantized_outputs, symmetric))
        except DecodeError as e:  # its shape inference writes a copy that a full disk cuts short, then reads it
            raise _cut_short(tmp, proto.ByteSize(), e) from e
        return onnx.load(str(dst))


def _extra_options(quantized_outputs: bool, symmetric: bool) -> dict[str, object]:
    """``quantize_static``'s extra options for the QDQ layout of :func:`quantize_int8`."""
    options: dict[str, object] = {}
    if not quantized_outputs:
        options["OpTypesToExcludeOutputQuantization"] = list(QUANTIZED_OPS)
    if symmetric:  # TensorRT: signed activations with zero point 0, float biases (no int32 DequantizeLinear)
        options.update(ActivationSymmetric=True, QuantizeBias=False)
    return options


def _cut_short(tmp: str, size: int, error: Exception) -> EngineError:
    """The error for ONNX Runtime's quantizer reading back a model it wrote into ``tmp`` cut short."""
    free = shutil.disk_usage(tmp).free / 2**20
    return EngineError(f"int8 quantization: ONNX Runtime's quantizer could not read back a model it wrote in "
                       f"{Path(tmp).parent} (the temporary folder, TMPDIR; {free:.1f} MiB free, it needs about "
                       f"{3 * size / 2**20:.1f} MiB): free space there or set TMPDIR to a folder with room ({error})")
