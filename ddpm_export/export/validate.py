"""Validation right after export: full checker, strict shape inference, and ONNX Runtime
against torch float32 at min, opt, max and one interior batch."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
import torch

from ddpm_export.contract.spec import ExportSpec
from ddpm_export.errors import NonFiniteOutputError, VerificationFailed, check_onnxruntime, load_error
from ddpm_export.metrics import FP16_CALL_REL_L2, FP32_MAX_ABS, INT8_REL_L2, errors, output_scale
from ddpm_export.nn.unet import UNet
from ddpm_export.threads import get_threads

check_onnxruntime(ort)  # an onnxruntime folder a half-done swap with onnxruntime-gpu left empty


class ValidationError(VerificationFailed):
    """The exported graph is malformed or disagrees with torch beyond the tolerance."""


class NonFiniteValidationError(ValidationError, NonFiniteOutputError):
    """ONNX Runtime produced NaN or infinity on the validation inputs."""


class NonFiniteModelError(NonFiniteValidationError):
    """The torch model itself produced NaN or infinity on the validation inputs: its weights, not
    the export, are at fault (writing the file unchecked would not help)."""


@dataclasses.dataclass(frozen=True)
class BatchError:
    """One validation batch's errors against torch; ``scale`` is the reference output's
    :func:`~ddpm_export.metrics.output_scale` (its RMS, at least 1), which scales fp32's max abs limit."""

    batch: int
    max_abs: float
    rel_l2: float
    scale: float


@dataclasses.dataclass(frozen=True)
class ValidationReport:
    precision: str
    errors: tuple[BatchError, ...]

    @property
    def max_abs(self) -> float:
        return max(e.max_abs for e in self.errors)

    @property
    def rel_l2(self) -> float:
        return max(e.rel_l2 for e in self.errors)


def torch_reference(unet: UNet, spec: ExportSpec, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """The float32 torch model's output on ``feeds`` (named as in ``spec``)."""
    args = [torch.from_numpy(feeds[name]) for name in spec.input_names]
    with torch.no_grad():
        return unet.eval()(*args).numpy()


def check_graph(path: str | Path, name: str | Path | None = None) -> onnx.ModelProto:
    """onnx.checker (full) and strict shape inference with type checks; returns the model (without
    its external data, if it has any). Errors name the file ``name`` (default ``path``)."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
        # the graph without its external data (> 2 GB): infer_shapes serialises the model it is given
        model = onnx.load(str(path), load_external_data=False)
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ValidationError(f"{path if name is None else name}: ONNX check failed: {e}") from e
    return model


def validation_session(path: str | Path, shown: str | Path) -> ort.InferenceSession:
    """ONNX Runtime's CPU session on ``path`` with ``ddpm-export --threads N``'s thread count
    (:func:`~ddpm_export.threads.get_threads`; None: ONNX Runtime's default), as every other
    session of a command; a graph it cannot load is a ValidationError naming ``shown``."""
    options, threads = ort.SessionOptions(), get_threads()
    if threads is not None:  # as the runtime's sessions (runtime/onnxruntime_backend.py, session_options_for)
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # ONNX Runtime's own classes (Fail, ...) derive from Exception only
        raise ValidationError(f"{shown}: ONNX Runtime cannot load the exported graph ({load_error(e)})") from e


def validate_onnx(path: str | Path, unet: UNet, spec: ExportSpec, precision: str, *,
                  max_abs: float = FP32_MAX_ABS, rel_l2: float = FP16_CALL_REL_L2,
                  log: Callable[[str], None] = print, name: str | Path | None = None) -> ValidationReport:
    """Run every check; raise ValidationError when one fails. fp32 is held to ``max_abs`` times
    each batch's output scale (:func:`~ddpm_export.metrics.output_scale`: 1 for unit-scale
    outputs), fp16 to ``rel_l2`` (against the float32 torch model in both cases). Messages name
    the file ``name`` (default ``path``: an export validates a temp copy of the file it will write)."""
    check_graph(path, name)
    shown = path if name is None else name
    session = validation_session(path, shown)
    results = []
    for batch in spec.validation_batches():
        feeds = spec.sample_inputs(batch, seed=batch)
        got = session.run(None, feeds)[0]
        if got.shape != spec.output_shape(batch) or got.dtype != np.float32:
            raise ValidationError(f"{shown}: batch {batch}: output {got.dtype}{list(got.shape)}, "
                                  f"expected float32{list(spec.output_shape(batch))}")
        want = torch_reference(unet, spec, feeds)
        if not np.isfinite(want).all():
            raise NonFiniteModelError(f"{shown}: the model itself (PyTorch) gives non-finite outputs at batch "
                                      f"{batch}, so no export of it can be checked: check its weights")
        if not np.isfinite(got).all():  # per batch: a max() over the batches drops a NaN after the first
            raise NonFiniteValidationError(f"{shown}: batch {batch}: {int((~np.isfinite(got)).sum())} of "
                                           f"{got.size} outputs from ONNX Runtime are NaN or infinite")
        err = BatchError(batch, *errors(got, want), scale=output_scale(want))
        log(f"  batch {batch:3d}: max abs {err.max_abs:.3e}  rel L2 {err.rel_l2:.3e}  (vs torch fp32)")
        results.append(err)
    report = ValidationReport(precision, tuple(results))
    worst = max(report.errors, key=lambda e: e.max_abs / e.scale)
    if precision == "fp32" and worst.max_abs > max_abs * worst.scale:
        scaled = f" ({max_abs:.1e} x the output's RMS {worst.scale:.3g})" if worst.scale > 1 else ""
        raise ValidationError(f"{shown}: fp32 max abs error {worst.max_abs:.3e} at batch {worst.batch} exceeds "
                              f"{max_abs * worst.scale:.1e}{scaled}")
    if precision == "int8" and report.rel_l2 > INT8_REL_L2:
        raise ValidationError(f"{shown}: int8 relative L2 error {report.rel_l2:.3e} exceeds {INT8_REL_L2:.1e}")
    if precision == "fp16" and report.rel_l2 > rel_l2:
        raise ValidationError(f"{shown}: fp16 relative L2 error {report.rel_l2:.3e} exceeds {rel_l2:.1e}")
    return report
