"""The three ONNX forms of attention, as kernels swapped into ``Attention`` while exporting.

- ``decomposed``: MatMul -> Softmax -> MatMul with q and k each pre-scaled by d^-1/4 and the
  softmax in fp32 (the model's own kernel). Portable; TensorRT fuses it into its MHA kernel.
- ``ort-mha``: ``com.microsoft.MultiHeadAttention`` (ONNX Runtime contrib op) on [B, N, h*d].
- ``onnx-attention``: the opset-23 ``Attention`` op on [B, h, N, d], with
  ``softmax_precision = FLOAT``.

Each fused kernel is a ``torch.autograd.Function`` whose forward computes the decomposed form (so
tracing sees correct values) and whose ``symbolic`` emits the fused node.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch.onnx import symbolic_helper

from ddpm_export.contract.choices import ATTENTION_FORMS
from ddpm_export.errors import BadInputError
from ddpm_export.nn.attention import AttentionKernel, decomposed_attention

AttentionForm = Literal["decomposed", "ort-mha", "onnx-attention"]
ONNX_FLOAT = 1  # TensorProto.FLOAT


class _OrtMultiHeadAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, bias, heads, head_dim):  # type: ignore[override]
        return decomposed_attention(q, k, v, bias)

    @staticmethod
    def symbolic(g, q, k, v, bias, heads, head_dim):  # type: ignore[no-untyped-def]

        def to_bsh(x):  # [B, h, S, d] -> [B, S, h*d]
            x = g.op("Transpose", x, perm_i=[0, 2, 1, 3])
            return g.op("Reshape", x, g.op("Constant", value_t=torch.tensor([0, 0, -1], dtype=torch.int64)))

        inputs = [to_bsh(q), to_bsh(k), to_bsh(v)]
        if not symbolic_helper._is_none(bias):
            none = symbolic_helper._optional_input_placeholder_tensor(g)
            bias4 = g.op("Unsqueeze", bias, g.op("Constant", value_t=torch.tensor([0], dtype=torch.int64)))
            inputs += [none, none, g.op("Cast", bias4, to_i=_onnx_dtype(q))]
        out = g.op("com.microsoft::MultiHeadAttention", *inputs, num_heads_i=heads,
                   scale_f=float(head_dim) ** -0.5)
        out.setType(q.type().with_sizes([None, None, None]))
        # [B, N, h*d] -> [B, h, N, d]
        out = g.op("Reshape", out, g.op("Constant", value_t=torch.tensor([0, 0, heads, head_dim], dtype=torch.int64)))
        return g.op("Transpose", out, perm_i=[0, 2, 1, 3])


class _OnnxAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, bias, head_dim):  # type: ignore[override]
        return decomposed_attention(q, k, v, bias)

    @staticmethod
    def symbolic(g, q, k, v, bias, head_dim):  # type: ignore[no-untyped-def]
        inputs = [q, k, v]
        if not symbolic_helper._is_none(bias):
            bias4 = g.op("Unsqueeze", bias, g.op("Constant", value_t=torch.tensor([0], dtype=torch.int64)))
            inputs.append(g.op("Cast", bias4, to_i=_onnx_dtype(q)))
        return g.op("Attention", *inputs, scale_f=float(head_dim) ** -0.5, softmax_precision_i=ONNX_FLOAT)


def _onnx_dtype(x) -> int:  # type: ignore[no-untyped-def]
    scalar = x.type().scalarType()
    return {"Float": 1, "Half": 10, "BFloat16": 16, "Double": 11}[scalar]


def _ort_mha(q, k, v, bias=None):  # type: ignore[no-untyped-def]
    return _OrtMultiHeadAttention.apply(q, k, v, bias, int(q.shape[1]), int(q.shape[3]))


def _onnx_attention(q, k, v, bias=None):  # type: ignore[no-untyped-def]
    return _OnnxAttention.apply(q, k, v, bias, int(q.shape[3]))


def attention_kernel(form: str) -> AttentionKernel:
    """The kernel that exports as ``form`` (one of ATTENTION_FORMS)."""
    kernels = {"decomposed": decomposed_attention, "ort-mha": _ort_mha, "onnx-attention": _onnx_attention}
    if form not in kernels:
        raise BadInputError(f"attention={form!r} is not valid; choose one of: auto, {', '.join(ATTENTION_FORMS)}")
    return kernels[form]


#: What ``auto`` picks per target: the form measured fastest there, not the one assumed fastest.
#: onnxruntime: ``ddpm-export bench --model ddpm-cifar10 --attention decomposed,ort-mha,onnx-attention``
#: (ONNX Runtime CPU provider, 2 threads, 2-core AMD EPYC with AVX-512, four runs on a shared machine;
#: README, "Speed"): ort-mha took 0.98-1.21x the decomposed form's time per step at batch 1
#: (mean 1.06x) and 0.97-1.08x at batch 8 (mean 1.02x); onnx-attention 0.93-1.18x and 0.89-1.02x.
#: No fused form was consistently faster, ort-mha was up to 1.21x slower, and decomposed is also the
#: form OpenVINO runs, so auto picks decomposed for onnxruntime (ort-mha stays an explicit choice).
#: tensorrt / any: decomposed -- TensorRT fuses it into its own attention kernel; every runtime runs it.
#: openvino: decomposed -- the form OpenVINO's CPU plugin fuses into its own attention subgraph (it
#: has no com.microsoft ops).
AUTO_ATTENTION: dict[str, str] = {"any": "decomposed", "onnxruntime": "decomposed", "openvino": "decomposed",
                                  "tensorrt": "decomposed"}


def resolve_attention(form: str, target: str) -> str:
    """``auto`` -> :data:`AUTO_ATTENTION` ``[target]``, the form measured fastest on ``target``."""
    if form != "auto":
        attention_kernel(form)
        return form
    return AUTO_ATTENTION[target]
