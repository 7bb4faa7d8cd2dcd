"""DDIM sampling (Song, Meng & Ermon 2021, "Denoising Diffusion Implicit Models").

One step from ``t`` to the next visited timestep ``prev`` (Song eq. 12, with ``alpha`` there
being ``abar`` here):

    x_prev = sqrt(abar_prev) * x0_hat                         "predicted x0"
           + sqrt(1 - abar_prev - sigma^2) * eps_hat           "direction pointing to x_t"
           + sigma * z                                         random noise, z ~ N(0, I)
    sigma  = eta * sqrt((1 - abar_prev) / (1 - abar_t)) * sqrt(1 - abar_t / abar_prev)   (Song eq. 16)

``eta = 0`` is deterministic DDIM, ``eta = 1`` has DDPM's ``fixed_small`` variance. After the
last visited timestep ``abar_prev`` is 1 (``set_alpha_to_one``) or ``abar_0``.
"""

from __future__ import annotations

import math

import numpy as np

from ddpm_export.diffusion.prediction import clip_x0, predict_x0_eps
from ddpm_export.diffusion.scheduler import Scheduler

__all__ = ["DDIMScheduler"]


class DDIMScheduler(Scheduler):
    """DDIM sampler. Reads ``eta``, ``set_alpha_to_one``, ``clip_sample``, ``prediction_type``."""

    def abar_prev(self, t: int) -> float:
        """``abar`` of the next visited timestep; past the end 1 or ``abar_0`` (``set_alpha_to_one``)."""
        prev_t = self.previous_timestep(t)
        if prev_t >= 0:
            return float(self.schedule.alphas_cumprod[prev_t])
        return 1.0 if self.config.set_alpha_to_one else float(self.schedule.alphas_cumprod[0])

    def sigma(self, t: int) -> float:
        """The step's noise standard deviation ``sigma`` at ``t`` (Song eq. 16), float64."""
        abar_t = float(self.schedule.alphas_cumprod[t])
        abar_prev = self.abar_prev(t)
        variance = (1.0 - abar_prev) / (1.0 - abar_t) * (1.0 - abar_t / abar_prev)
        return self.config.eta * math.sqrt(variance)

    def uses_noise(self, t: int) -> bool:
        return self.config.eta > 0

    def step(
        self, model_output: np.ndarray, t: int, x_t: np.ndarray, noise: np.ndarray | None = None
    ) -> np.ndarray:
        """Song eq. 12 (see the module doc). Shapes ``[B, C, H, W]``; returns float32."""
        self._check_step_args(model_output, t, x_t, noise)
        c = self.config
        abar_t = float(self.schedule.alphas_cumprod[t])
        abar_prev = self.abar_prev(t)
        sigma = self.sigma(t)

        x0, eps = predict_x0_eps(model_output, x_t, abar_t, c.prediction_type)
        x0 = clip_x0(x0, c.clip_sample, c.clip_sample_range)

        # The radicand is (1 - abar_prev) abar_t (1 / abar_prev - 1) / (1 - abar_t) >= 0 at eta = 1;
        # max(.., 0) only guards against rounding.
        direction = math.sqrt(max(1.0 - abar_prev - sigma**2, 0.0))
        x_prev = math.sqrt(abar_prev) * x0 + direction * eps
        if self.uses_noise(t):
            assert noise is not None  # checked by _check_step_args
            x_prev = x_prev + sigma * np.asarray(noise, dtype=np.float64)
        return x_prev.astype(np.float32)
