"""The precision policy's metadata record (torch-free).

Shared by the export (:mod:`ddpm_export.export.precision`, which writes the policy into the
model) and by the ONNX-only fp32 -> fp16 graph pass (:mod:`ddpm_export.export.fp16_pass`). The
policy names themselves are :data:`ddpm_export.contract.choices.PRECISIONS`.
"""

from __future__ import annotations

from typing import Literal

from ddpm_export.contract.choices import PRECISIONS
from ddpm_export.errors import BadInputError

__all__ = ["FP32_ISLANDS", "PRECISIONS", "Precision", "check_precision", "policy"]

Precision = Literal["fp32", "fp16", "int8"]  # int8: the fp32 graph, quantized (ddpm_export.export.int8)
FP32_ISLANDS = ("time_embedding", "class_embedding", "normalization_statistics", "position_codes",
                "attention_bias_and_softmax")


def policy(precision: str, *, quantized_outputs: bool = True) -> dict[str, object]:
    """The policy as recorded in the ONNX metadata. ``quantized_outputs``: int8 only, whether the
    outputs of the quantized ops are quantized too (:func:`ddpm_export.export.int8.quantize_int8`)."""
    check_precision(precision)
    if precision == "int8":
        return {"precision": "int8", "io_dtype": "float32", "compute_dtype": "int8 QDQ (Conv, MatMul, Gemm)",
                "quantized_outputs": quantized_outputs,
                "float_islands": ["embedding", "first_last_conv", "attention"],
                "calibration": "sampler trajectories (ddpm_export.export.int8)"}
    return {"precision": precision, "io_dtype": "float32",
            "compute_dtype": "float16" if precision == "fp16" else "float32",
            "fp32_islands": list(FP32_ISLANDS) if precision == "fp16" else []}


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise BadInputError(f"precision={precision!r} is not valid; choose one of: {', '.join(PRECISIONS)}")
