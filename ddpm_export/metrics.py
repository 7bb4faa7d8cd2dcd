"""Error measures and the limits every comparison in the project uses (numpy only, torch-free)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["BF16_CALL_REL_L2", "BF16_FINAL_PSNR_DB", "BF16_LOCAL_REL_L2", "BF16_REL_L2", "FP16_CALL_REL_L2",
           "FP16_REL_L2", "FP32_MAX_ABS", "INT8_CALL_REL_L2", "INT8_FINAL_PSNR_DB", "INT8_LOCAL_REL_L2", "INT8_REL_L2",
           "compare", "errors", "output_scale"]

#: one model call, exported vs torch float32: max abs error for fp32 files (for outputs of unit
#: scale; times :func:`output_scale` for larger ones)
FP32_MAX_ABS = 1e-4
#: one call of an fp16 export vs torch fp32, the export's validation limit: measured 1.2e-4
#: (digits), 6.7e-4 (kitchen-sink), 8.1e-4 (tiny), 7.0e-4 (ddpm-cifar10), about 5x margin over the
#: worst (2e-2 passed a softmax over the wrong axis, 9.6e-3, and an output scaled by 1.019)
FP16_CALL_REL_L2 = 4e-3
#: verify's per-call limit for fp16 on TensorRT and GPU providers (their kernels differ from ONNX
#: Runtime's CPU ones; the final samples' 40 dB decides), and its per-step local limit for every
#: fp16 backend (ONNX Runtime CPU and OpenVINO f32 take FP16_CALL_REL_L2 per single call)
FP16_REL_L2 = 2e-2
#: OpenVINO computing an fp32 file in bfloat16, and int8 QDQ files, measured on the digits model
#: (README, "Lower precision"): one call at verify's fixed timesteps (bf16 3.9e-3, int8 1.2e-2), the
#: worst call along a trajectory re-run on the reference's inputs (bf16 0.12, int8 0.31: always at
#: t < 20, where the network must find a faint noise in a finished image and the step scales its
#: error by sqrt(1 - abar_t) < 0.03), and the final samples (bf16 56 dB, int8 45 dB). Each limit
#: leaves about 2-4x (10 dB) of margin over the measurement.
BF16_CALL_REL_L2 = 3.9e-3  # the measured one-call errors: the size of verify's noise probe
INT8_CALL_REL_L2 = 1.2e-2
BF16_REL_L2 = 2e-2
BF16_LOCAL_REL_L2 = 0.25
BF16_FINAL_PSNR_DB = 40.0
INT8_REL_L2 = 5e-2
INT8_LOCAL_REL_L2 = 0.6
INT8_FINAL_PSNR_DB = 35.0


def errors(actual: np.ndarray, expected: np.ndarray) -> tuple[float, float]:
    """``(max |a - e|, ||a - e||_2 / ||e||_2)`` in float64."""
    expected = expected.astype(np.float64)  # a float32 norm of outputs past ~1e19 overflows: a relative error of 0
    diff = actual.astype(np.float64) - expected
    return float(np.abs(diff).max()), float(np.linalg.norm(diff) / max(float(np.linalg.norm(expected)), 1e-30))


def output_scale(*references: np.ndarray) -> float:
    """What :data:`FP32_MAX_ABS` is multiplied by: the largest RMS of ``references``, at least 1.

    float32 rounding errors grow with the values they round, so a model whose outputs are 300x
    larger than unit-scale ones (a predicted noise or velocity) is held to a 300x larger max abs
    error (measured: the digits model with its last conv scaled 300x, output RMS 296-387, exports with
    max abs 3.7e-4 at relative L2 2.9e-7, the same relative error as the unscaled model's)."""
    rms = max(float(np.sqrt(np.mean(np.square(r, dtype=np.float64)))) for r in references)
    return max(1.0, rms) if np.isfinite(rms) else 1.0


def compare(actual: np.ndarray, expected: np.ndarray) -> dict[str, Any]:
    """Max abs error, relative L2, MSE and PSNR ``10 log10(4 / MSE)`` for images in [-1, 1]
    (peak-to-peak 2; None when the arrays are equal), in float64."""
    max_abs, rel_l2 = errors(actual, expected)
    mse = float(np.mean((actual.astype(np.float64) - expected.astype(np.float64)) ** 2))
    return {"max_abs": max_abs, "rel_l2": rel_l2, "mse": mse,
            "psnr_db": None if mse == 0 else 10.0 * math.log10(4.0 / mse)}
