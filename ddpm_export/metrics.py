"""Error measures and the limits every comparison in the project uses (numpy only, torch-free)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["FP16_REL_L2", "FP32_MAX_ABS", "compare", "errors"]

#: one model call, exported vs torch float32: max abs error for fp32 files, relative L2 for fp16
FP32_MAX_ABS = 1e-4
FP16_REL_L2 = 2e-2


def errors(actual: np.ndarray, expected: np.ndarray) -> tuple[float, float]:
    """``(max |a - e|, ||a - e||_2 / ||e||_2)`` in float64."""
    diff = actual.astype(np.float64) - expected.astype(np.float64)
    return float(np.abs(diff).max()), float(np.linalg.norm(diff) / max(float(np.linalg.norm(expected)), 1e-30))


def compare(actual: np.ndarray, expected: np.ndarray) -> dict[str, Any]:
    """Max abs error, relative L2, MSE and PSNR ``10 log10(4 / MSE)`` for images in [-1, 1]
    (peak-to-peak 2; None when the arrays are equal), in float64."""
    max_abs, rel_l2 = errors(actual, expected)
    mse = float(np.mean((actual.astype(np.float64) - expected.astype(np.float64)) ** 2))
    return {"max_abs": max_abs, "rel_l2": rel_l2, "mse": mse,
            "psnr_db": None if mse == 0 else 10.0 * math.log10(4.0 / mse)}
