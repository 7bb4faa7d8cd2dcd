"""The names of the export switches recorded in files and offered by the CLI (torch-free).

The export modules map each name to its implementation (``export/attention_forms.py``,
``export/precision.py``); the CLI's ``click.Choice`` lists come from here, so a name is typed once.
"""

from __future__ import annotations

__all__ = ["ATTENTION_CHOICES", "ATTENTION_FORMS", "BACKENDS", "HARDWARE_COMPATIBILITY", "MAX_OPSET", "MIN_OPSET", "ORT_GPU_BACKENDS",
           "PRECISIONS", "REWRITE_CHOICES", "REWRITES", "TARGETS"]

#: precision policies of an export (``ddpm_export.precision_policy``'s ``precision``)
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")
#: forms of attention in the graph (``ddpm_export.attention``)
ATTENTION_FORMS: tuple[str, ...] = ("decomposed", "ort-mha", "onnx-attention")
#: ``--attention`` values: a form, or ``auto`` (chosen per ``--target``)
ATTENTION_CHOICES: tuple[str, ...] = ("auto", *ATTENTION_FORMS)
#: the lowest opset each form needs
MIN_OPSET = {"decomposed": 17, "ort-mha": 17, "onnx-attention": 23}
#: the highest opset the TorchScript exporter writes (torch 2.x)
MAX_OPSET = 23
#: exact rewrites an export may apply (``ddpm_export.nn.rewrites``); ``--rewrites`` also takes
#: ``auto`` (chosen per precision, ``ddpm_export.export.rewrites``) and ``none``
REWRITES: tuple[str, ...] = ("upsample-deconv", "upsample-subpixel", "attention-fold")
#: one ``--rewrites`` token: ``auto``, ``none`` or one rewrite (``bench --rewrites`` compares several)
REWRITE_CHOICES: tuple[str, ...] = ("auto", "none", *REWRITES)
#: where an exported file will run: decides ``--attention auto``, ``--rewrites auto`` and, for int8,
#: where the quantize/dequantize pairs go (``ddpm_export.export.int8``)
TARGETS: tuple[str, ...] = ("any", "onnxruntime", "openvino", "tensorrt")
#: ``--hardware-compatibility`` of a TensorRT engine (recorded in its sidecar): only GPUs like the
#: builder's, any GPU of compute capability >= 8.0, or any GPU of the builder's compute capability
HARDWARE_COMPATIBILITY: tuple[str, ...] = ("none", "ampere+", "same-compute-capability")
#: ONNX Runtime's GPU execution providers as runtime backends (``ddpm_export.runtime.ort_gpu``)
ORT_GPU_BACKENDS: tuple[str, ...] = ("ort-cuda", "ort-tensorrt")
#: every runtime backend (``Pipeline``'s ``backend``): ONNX Runtime on the CPU, OpenVINO (CPU;
#: ``ddpm_export.runtime.openvino_backend``), ONNX Runtime's GPU providers,
#: or a TensorRT engine
BACKENDS: tuple[str, ...] = ("onnxruntime", "openvino", *ORT_GPU_BACKENDS, "tensorrt")
