"""The precision policy's metadata record (torch-free).

Shared by the export (:mod:`ddpm_export.export.precision`, which writes the policy into the
model) and by the ONNX-only fp32 -> fp16 graph pass (:mod:`ddpm_export.export.fp16_pass`). The
policy names themselves are :data:`ddpm_export.contract.choices.PRECISIONS`.
"""

from __future__ import annotations

from typing import Literal, Mapping

from ddpm_export.configbase import check_choice
from ddpm_export.contract.choices import ATTENTION_FORMS, PRECISIONS
from ddpm_export.errors import BadInputError

__all__ = ["FLOAT_GROUPS", "FP32_ISLANDS", "PRECISIONS", "Precision", "check_precision", "fp16_islands", "policy"]

Precision = Literal["fp32", "fp16", "int8"]  # int8: the fp32 graph, quantized (ddpm_export.export.int8)
FP32_ISLANDS = ("time_embedding", "class_embedding", "normalization_statistics", "position_codes",
                "attention_bias_and_softmax")


def fp16_islands(attention: str) -> list[str]:
    """The fp32 islands of an fp16 graph with attention form ``attention``: the decomposed form
    keeps the bias add and the softmax in fp32; ONNX's ``Attention`` op (``onnx-attention``) keeps
    the softmax (``softmax_precision``) but takes the bias in fp16; ONNX Runtime's fused
    ``MultiHeadAttention`` (``ort-mha``) takes every input in one type, so it runs in fp16."""
    check_choice("attention", attention, ATTENTION_FORMS)
    islands = [i for i in FP32_ISLANDS if i != "attention_bias_and_softmax"]
    return islands + {"decomposed": ["attention_bias_and_softmax"], "onnx-attention": ["attention_softmax"],
                      "ort-mha": []}[attention]


#: the node groups an int8 file keeps in float by default (:mod:`ddpm_export.export.int8`)
FLOAT_GROUPS: tuple[str, ...] = ("embedding", "first_last_conv", "attention")


def policy(precision: str, *, attention: str = "decomposed", quantized_outputs: bool = True,
           float_groups: tuple[str, ...] = FLOAT_GROUPS, symmetric_activations: bool = False,
           calibration: Mapping[str, object] | None = None) -> dict[str, object]:
    """The policy as recorded in the ONNX metadata. ``attention``: the graph's attention form (fp16:
    which of attention stays fp32, :func:`fp16_islands`). ``quantized_outputs``, ``float_groups``,
    ``symmetric_activations`` and ``calibration``: int8 only, whether the outputs of the quantized
    ops are quantized too, the groups kept float, whether activations are signed int8 with zero
    point 0 (else uint8) and the calibration's settings (:func:`ddpm_export.export.int8.quantize_int8`)."""
    check_precision(precision)
    if precision == "int8":
        return {"precision": "int8", "io_dtype": "float32", "compute_dtype": "int8 QDQ (Conv, MatMul, Gemm)",
                "activation_dtype": "int8 (zero point 0)" if symmetric_activations else "uint8",
                "quantized_outputs": quantized_outputs, "float_islands": list(float_groups),
                "calibration": {"method": "min/max over the float32 model's DDIM trajectories "
                                          "(ddpm_export.export.int8)", **(calibration or {})}}
    return {"precision": precision, "io_dtype": "float32",
            "compute_dtype": "float16" if precision == "fp16" else "float32",
            "fp32_islands": fp16_islands(attention) if precision == "fp16" else []}


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise BadInputError(f"precision={precision!r} is not valid; choose one of: {', '.join(PRECISIONS)}")
