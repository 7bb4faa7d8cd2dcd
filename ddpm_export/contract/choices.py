"""The names of the export switches recorded in files and offered by the CLI (torch-free).

The export modules map each name to its implementation (``export/attention_forms.py``,
``export/precision.py``); the CLI's ``click.Choice`` lists come from here, so a name is typed once.
"""

from __future__ import annotations

__all__ = ["ATTENTION_CHOICES", "ATTENTION_FORMS", "MIN_OPSET", "PRECISIONS", "TARGETS"]

#: precision policies of an export (``ddpm_export.precision_policy``'s ``precision``)
PRECISIONS: tuple[str, ...] = ("fp32", "fp16")
#: forms of attention in the graph (``ddpm_export.attention``)
ATTENTION_FORMS: tuple[str, ...] = ("decomposed", "ort-mha", "onnx-attention")
#: ``--attention`` values: a form, or ``auto`` (chosen per ``--target``)
ATTENTION_CHOICES: tuple[str, ...] = ("auto", *ATTENTION_FORMS)
#: the lowest opset each form needs
MIN_OPSET = {"decomposed": 17, "ort-mha": 17, "onnx-attention": 23}
#: where an exported file will run (decides ``--attention auto``)
TARGETS: tuple[str, ...] = ("any", "onnxruntime", "tensorrt")
