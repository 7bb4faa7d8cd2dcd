"""DDPM ancestral sampling (Ho et al. 2020, Algorithm 2), with diffusers' respacing.

One step samples ``x_prev ~ q(x_prev | x_t, x0_hat) = N(mu~, var)``, the posterior of Ho eq. 6-7
evaluated at the predicted ``x0_hat``:

    mu~  = sqrt(abar_prev) beta_t / (1 - abar_t) * x0_hat
         + sqrt(alpha_t) (1 - abar_prev) / (1 - abar_t) * x_t          (Ho eq. 7)
    var  = beta~_t = (1 - abar_prev) / (1 - abar_t) * beta_t            fixed_small (Ho eq. 7)
    var  = beta_t                                                       fixed_large

With N < T inference steps, ``prev`` is the next visited timestep and ``alpha_t`` / ``beta_t``
are those of the jump: ``alpha_t = abar_t / abar_prev``, ``beta_t = 1 - alpha_t`` (what
diffusers' DDPMScheduler does; with N = T they are the schedule's own alpha_t, beta_t).
"""

from __future__ import annotations

import math

import numpy as np

from ddpm_export.diffusion.prediction import clip_x0, predict_x0_eps
from ddpm_export.diffusion.scheduler import Scheduler

__all__ = ["DDPMScheduler"]

#: fixed_small's variance is clamped here so that ``log(var)`` stays finite at t = 0 (diffusers).
MIN_VARIANCE = 1e-20


class DDPMScheduler(Scheduler):
    """Ancestral DDPM sampler. Reads ``variance_type``, ``clip_sample``, ``prediction_type``."""

    def variance(self, t: int) -> float:
        """The step's variance at ``t``: ``beta~_t`` (clamped at 1e-20) or ``beta_t`` (float64).

        Golden values (diffusers' tests; linear, T = 1000, fixed_small): 0 at t = 0,
        0.00979 at t = 487, 0.02 at t = 999.
        """
        abar_t = float(self.schedule.alphas_cumprod[t])
        abar_prev = self.abar_prev(t)
        beta_t = 1.0 - abar_t / abar_prev
        if self.config.variance_type == "fixed_large":
            return beta_t
        return max((1.0 - abar_prev) / (1.0 - abar_t) * beta_t, MIN_VARIANCE)

    def uses_noise(self, t: int) -> bool:
        # diffusers tests the timestep itself, so with steps_offset > 0 the last step is noised too.
        return t > 0

    def step(
        self, model_output: np.ndarray, t: int, x_t: np.ndarray, noise: np.ndarray | None = None
    ) -> np.ndarray:
        """``x_prev = mu~(x_t, x0_hat) + sqrt(var) * noise`` (no noise at t = 0); see the module doc.

        Shapes ``[B, C, H, W]``; returns float32.
        """
        self._check_step_args(model_output, t, x_t, noise)
        c = self.config
        abar_t = float(self.schedule.alphas_cumprod[t])
        abar_prev = self.abar_prev(t)
        alpha_t = abar_t / abar_prev
        beta_t = 1.0 - alpha_t

        x0, _ = predict_x0_eps(model_output, x_t, abar_t, c.prediction_type)
        x0 = clip_x0(x0, c.clip_sample, c.clip_sample_range)

        coef_x0 = math.sqrt(abar_prev) * beta_t / (1.0 - abar_t)
        coef_xt = math.sqrt(alpha_t) * (1.0 - abar_prev) / (1.0 - abar_t)
        x_prev = coef_x0 * x0 + coef_xt * np.asarray(x_t, dtype=np.float64)
        if self.uses_noise(t):
            assert noise is not None  # checked by _check_step_args
            x_prev = x_prev + math.sqrt(self.variance(t)) * np.asarray(noise, dtype=np.float64)
        return x_prev.astype(np.float32)
