"""``--rewrites``: which exact rewrites (:mod:`ddpm_export.nn.rewrites`) an export applies.

``auto`` picks per precision what was measured faster (ddpm-cifar10, 2 threads, AVX-512
EPYC, files side by side in one run; README, "Speed"; docs/speed-levers.md):

- fp32: ``upsample-deconv`` and ``attention-fold``. ``upsample-deconv`` alone made a forward
  1.01-1.07x faster in ONNX Runtime and 1.01-1.10x in OpenVINO (f32 and bf16); with
  ``attention-fold`` as well, 1.08-1.09x in ONNX Runtime and 1.09-1.12x in OpenVINO, at batch 1
  and 8. ``upsample-subpixel`` instead of ``upsample-deconv``: 0.95-1.01x in ONNX Runtime.
- int8: ``upsample-subpixel`` and ``attention-fold``. ``upsample-subpixel`` alone: 1.04x / 1.09x
  (batch 1 / 8) in OpenVINO with bf16 float parts (the best CPU path), 1.05x / 1.06x with f32
  float parts, 1.00x / 1.02x in ONNX Runtime; with ``attention-fold`` as well, 1.05-1.06x /
  1.09x in OpenVINO bf16 and 1.07x / 1.07x in ONNX Runtime. (``attention-fold`` alone measured
  0.95-1.00x on the int8 file in session 3; on top of the subpixel form it was 1.02-1.03x in two
  runs.) ``upsample-deconv`` was 0.90-0.95x: the transposed conv does not run as an int8 kernel.
- fp16, and anything for ``--target tensorrt``: none, until measured on a GPU (TensorRT has its
  own deconvolution and attention kernels; this project has not had a GPU to time them on).
"""

from __future__ import annotations

from ddpm_export.contract.choices import REWRITES
from ddpm_export.nn.rewrites import check_rewrites

__all__ = ["AUTO_REWRITES", "resolve_rewrites"]

AUTO_REWRITES: dict[str, tuple[str, ...]] = {"fp32": ("upsample-deconv", "attention-fold"), "fp16": (),
                                              "int8": ("upsample-subpixel", "attention-fold")}


def resolve_rewrites(value: str, precision: str, target: str = "any") -> tuple[str, ...]:
    """``"auto"`` -> :data:`AUTO_REWRITES` ``[precision]`` (none for ``target="tensorrt"``);
    ``"none"`` or ``""`` -> ``()``; else the comma-separated names, each checked (BadInputError
    listing the choices), in the order of :data:`REWRITES`."""
    if value == "auto":
        return () if target == "tensorrt" else AUTO_REWRITES[precision]
    if value in ("none", ""):
        return ()
    names = tuple(dict.fromkeys(part.strip() for part in value.split(",")))
    return tuple(name for name in REWRITES if name in check_rewrites(names))
