"""Multistep DPM-Solver (Lu et al. 2022, arXiv:2206.00927) and DPM-Solver++ (arXiv:2211.01095).

Both integrate the diffusion ODE exactly in its linear part and approximate the network's part
by a polynomial in ``lambda`` through the last ``k`` outputs (order ``k`` = 1, 2, 3). From
``s0`` (the current sigma, with earlier ``s1``, ``s2``) to ``t`` (the next), ``h = lambda_t - lambda_s0``,
``r0 = (lambda_s0 - lambda_s1) / h``, ``r1 = (lambda_s1 - lambda_s2) / h``, outputs ``m0, m1, m2``:

    order 1:  D0 = m0                                   (DPM-Solver-1 = DDIM)
    order 2:  D1 = (m0 - m1) / r0
    order 3:  D1_0 = (m0 - m1) / r0, D1_1 = (m1 - m2) / r1,
              D1 = D1_0 + r0 / (r0 + r1) (D1_0 - D1_1),  D2 = (D1_0 - D1_1) / (r0 + r1)

and ``x_t = cx x_s0 + c0 D0 + c1 D1 + c2 D2 (+ cz z)`` with (``phi = e^-h - 1``):

    dpmsolver++ (x0 outputs; 2211.01095 eq. 9 / Alg. 2):  cx = sigma_t / sigma_s0,  c0 = -alpha_t phi,
        c1 = -alpha_t phi / 2 (midpoint) or alpha_t (phi / h + 1) (heun; order 3 always),
        c2 = -alpha_t ((phi + h) / h^2 - 1/2)
    dpmsolver (eps outputs; 2206.00927 eq. 3.8, Alg. 1), with psi = e^h - 1:  cx = alpha_t / alpha_s0,
        c0 = -sigma_t psi, c1 = -sigma_t psi / 2 (midpoint) or -sigma_t (psi / h - 1) (heun; order 3),
        c2 = -sigma_t ((psi - h) / h^2 - 1/2)
    sde-dpmsolver++ (x0 outputs, 2211.01095 App. D), with q = 1 - e^-2h:  cx = sigma_t / sigma_s0 e^-h,
        c0 = alpha_t q, c1 = alpha_t q / 2 (midpoint) or alpha_t (q / (-2h) + 1) (heun; order 3),
        c2 = alpha_t ((q - 2h) / (2h)^2 - 1/2),  cz = sigma_t sqrt(q)

These are diffusers' ``DPMSolverMultistepScheduler`` updates term for term (its float64 step code
is the test oracle). The SDE variant's ``z`` is the loop's per-step noise array (CONVENTIONS.md),
so it consumes the same stream as DDPM and DDIM with eta > 0.

Order schedule (diffusers): the first steps warm up (order = steps taken so far + 1). With
``lower_order_final`` and fewer than 15 steps the last step is first order and the one before at
most second order; with ``final_sigmas_type="zero"`` the last step is always first order (it lands
on sigma = 0, where lambda is infinite and only ``x_t = D0`` is defined).
"""

from __future__ import annotations

import math

import numpy as np

from ddpm_export.diffusion.config import DPM_SOLVER_TYPES
from ddpm_export.diffusion.multistep import MultistepScheduler

__all__ = ["DPMSolverMultistepScheduler"]

#: fewer steps than this and lower_order_final lowers the last two steps (diffusers' threshold)
LOWER_ORDER_FINAL_BELOW = 15


class DPMSolverMultistepScheduler(MultistepScheduler):
    """DPM-Solver(++) multistep. Reads ``algorithm_type``, ``solver_order``, ``solver_type``
    (midpoint | heun), ``lower_order_final``, ``use_karras_sigmas``, ``final_sigmas_type``,
    ``prediction_type``, ``timestep_spacing``, ``steps_offset``."""

    SOLVER_TYPES = DPM_SOLVER_TYPES
    ROUND_COSINE_KARRAS = False

    @property
    def _data_prediction(self) -> bool:
        return self.config.algorithm_type != "dpmsolver"

    def uses_noise(self, t: int) -> bool:
        return self.config.algorithm_type == "sde-dpmsolver++"

    def step_order(self, i: int) -> int:
        """The order of step ``i`` (0-based) given the warm-up and ``lower_order_final``."""
        c, n = self.config, len(self.timesteps)
        few = c.lower_order_final and n < LOWER_ORDER_FINAL_BELOW
        if i == n - 1 and (few or c.final_sigmas_type == "zero"):
            return 1
        order = min(c.solver_order, i + 1)
        return min(order, 2) if i == n - 2 and few else order

    def step(
        self, model_output: np.ndarray, t: int, x_t: np.ndarray, noise: np.ndarray | None = None
    ) -> np.ndarray:
        """One multistep update (module doc); shapes ``[B, C, H, W]``; returns float32."""
        i = self._begin_step(model_output, t, x_t, noise)
        self._push(self._x0_or_eps(model_output, x_t, self._data_prediction))
        order = self.step_order(i)
        cx, c0, c1, c2, cz = self._coefficients(i, order)
        m = self.model_outputs
        x_prev = cx * np.asarray(x_t, dtype=np.float64) + c0 * m[-1]
        if order >= 2:
            D1, D2 = self._differences(i, order)
            x_prev = x_prev + c1 * D1
            if order == 3:
                x_prev = x_prev + c2 * D2
        if self.uses_noise(t):
            assert noise is not None  # checked by _begin_step
            x_prev = x_prev + cz * np.asarray(noise, dtype=np.float64)
        self.step_index += 1
        return x_prev.astype(np.float32)

    def _differences(self, i: int, order: int) -> tuple[np.ndarray, np.ndarray | None]:
        """``D1`` (and ``D2`` at order 3) from the history, see the module doc."""
        m = self.model_outputs
        lam_t, lam_s0, lam_s1 = (self._level(j)[2] for j in (i + 1, i, i - 1))
        h = lam_t - lam_s0
        r0 = (lam_s0 - lam_s1) / h
        if order == 2:
            return (1.0 / r0) * (m[-1] - m[-2]), None
        r1 = (lam_s1 - self._level(i - 2)[2]) / h
        d10, d11 = (1.0 / r0) * (m[-1] - m[-2]), (1.0 / r1) * (m[-2] - m[-3])
        return d10 + (r0 / (r0 + r1)) * (d10 - d11), (1.0 / (r0 + r1)) * (d10 - d11)

    def _coefficients(self, i: int, order: int) -> tuple[float, float, float, float, float]:
        """``(cx, c0, c1, c2, cz)`` of step ``i`` at ``order`` (module doc)."""
        alpha_t, sigma_t, lam_t = self._level(i + 1)
        alpha_s, sigma_s, lam_s = self._level(i)
        h = lam_t - lam_s  # +inf when landing on sigma = 0
        heun = order == 3 or self.solver_type == "heun"
        c1 = c2 = cz = 0.0
        algorithm = self.config.algorithm_type
        if algorithm == "dpmsolver++":
            phi = math.exp(-h) - 1.0
            cx, c0 = sigma_t / sigma_s, -alpha_t * phi
            if order >= 2:
                c1 = alpha_t * (phi / h + 1.0) if heun else -0.5 * alpha_t * phi
                c2 = -alpha_t * ((phi + h) / h**2 - 0.5)
        elif algorithm == "dpmsolver":
            psi = math.exp(h) - 1.0
            cx, c0 = alpha_t / alpha_s, -sigma_t * psi
            if order >= 2:
                c1 = -sigma_t * (psi / h - 1.0) if heun else -0.5 * sigma_t * psi
                c2 = -sigma_t * ((psi - h) / h**2 - 0.5)
        else:  # sde-dpmsolver++
            q = 1.0 - math.exp(-2.0 * h)
            cx, c0, cz = sigma_t / sigma_s * math.exp(-h), alpha_t * q, sigma_t * math.sqrt(q)
            if order >= 2:
                c1 = alpha_t * (q / (-2.0 * h) + 1.0) if heun else 0.5 * alpha_t * q
                c2 = alpha_t * ((q - 2.0 * h) / (2.0 * h) ** 2 - 0.5)
        return cx, c0, c1, c2, cz
