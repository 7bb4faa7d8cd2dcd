"""From the network's output to ``(x0_hat, eps_hat)``, for each parameterisation.

With ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` (Ho eq. 4), any one of ``eps``, ``x_0``
or ``v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0`` (Salimans & Ho 2022, section 4) determines
the other two given ``x_t``:

- ``epsilon``: ``x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)`` (Ho eq. 15).
- ``sample``: ``eps = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t)``.
- ``v_prediction``: ``x0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v``,
  ``eps = sqrt(abar_t) v + sqrt(1 - abar_t) x_t``.

Arithmetic is float64; callers round once at the end of a step.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from ddpm_export.diffusion.config import PredictionType

__all__ = ["clip_x0", "predict_x0_eps", "split_prediction"]

# (model_output, x_t, sqrt(abar_t), sqrt(1 - abar_t)) -> (x0, eps)
_Split = Callable[[np.ndarray, np.ndarray, float, float], tuple[np.ndarray, np.ndarray]]


def _from_epsilon(out: np.ndarray, x: np.ndarray, a: float, b: float) -> tuple[np.ndarray, np.ndarray]:
    return (x - b * out) / a, out


def _from_sample(out: np.ndarray, x: np.ndarray, a: float, b: float) -> tuple[np.ndarray, np.ndarray]:
    return out, (x - a * out) / b


def _from_v(out: np.ndarray, x: np.ndarray, a: float, b: float) -> tuple[np.ndarray, np.ndarray]:
    return a * x - b * out, a * out + b * x


_SPLITS: dict[str, _Split] = {
    "epsilon": _from_epsilon,
    "sample": _from_sample,
    "v_prediction": _from_v,
}


def predict_x0_eps(
    model_output: np.ndarray, x_t: np.ndarray, abar_t: float, prediction_type: PredictionType
) -> tuple[np.ndarray, np.ndarray]:
    """``(x0_hat, eps_hat)``, both float64 with the shape of ``x_t`` ([B, C, H, W]).

    ``abar_t`` is ``alphas_cumprod[t]``; ``eps_hat`` is derived from the unclipped ``x0_hat``
    (diffusers' default, ``use_clipped_model_output=False``).
    """
    return split_prediction(model_output, x_t, math.sqrt(abar_t), math.sqrt(1.0 - abar_t), prediction_type)


def split_prediction(
    model_output: np.ndarray, x_t: np.ndarray, alpha_t: float, sigma_t: float, prediction_type: PredictionType
) -> tuple[np.ndarray, np.ndarray]:
    """``(x0_hat, eps_hat)`` for ``x_t = alpha_t x0 + sigma_t eps`` given the two coefficients
    (the multistep solvers hold ``alpha_t``, ``sigma_t`` rather than ``abar_t``); float64."""
    out = np.asarray(model_output, dtype=np.float64)
    x = np.asarray(x_t, dtype=np.float64)
    return _SPLITS[prediction_type](out, x, alpha_t, sigma_t)


def clip_x0(x0: np.ndarray, clip_sample: bool, clip_sample_range: float) -> np.ndarray:
    """``x0`` clipped to ``[-clip_sample_range, clip_sample_range]`` when ``clip_sample``."""
    return np.clip(x0, -clip_sample_range, clip_sample_range) if clip_sample else x0
