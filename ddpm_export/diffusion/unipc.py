"""UniPC: a unified predictor-corrector multistep solver (Zhao et al. 2023, arXiv:2302.04867).

Predictor UniP-p (their Alg. 2, B(h) form) from ``s0`` to ``t``, with ``h = lambda_t - lambda_s0``,
``hh = -h`` for data prediction (``predict_x0``, UniPC's "++" form) or ``h`` for noise prediction:

    x_t = (sigma_t / sigma_s0) x_s0 - alpha_t (e^hh - 1) m0 - alpha_t B(h) sum_k rho_k D_k     (x0)
    x_t = (alpha_t / alpha_s0) x_s0 - sigma_t (e^hh - 1) m0 - sigma_t B(h) sum_k rho_k D_k     (eps)

with ``r_k = (lambda_{s_k} - lambda_s0) / h``, ``D_k = (m_k - m0) / r_k`` over the previous
outputs ``m_k`` (k = 1 .. p-1), ``B(h) = hh`` (``bh1``) or ``e^hh - 1`` (``bh2``), and the
``rho`` solving ``R rho = b`` with ``R[i, k] = r_k^i``, ``b_i = i! phi_{i+1}(hh) / B(h)``
(their eq. 8 / Thm. 3.1; ``rho = 1/2`` for p = 2).

Corrector UniC-p (their Alg. 1): once the network has been evaluated at the predicted ``x_t``
(the next step's input), the same update from ``s0`` is redone with that new output ``m_t`` as
one more point (``r = 1``): ``... - alpha_t B(h) (sum_k rho_k D_k + rho_t (m_t - m0))``,
``rho = 1/2`` for p = 1. It costs no model call: the corrected ``x_t`` replaces the input of the
step that evaluated it. ``disable_corrector`` lists the steps whose output is left uncorrected.

This is diffusers' ``UniPCMultistepScheduler`` term for term (its float64 step code is the test
oracle), with one deliberate difference: with ``bh1`` and ``final_sigmas_type="zero"`` diffusers
returns NaN at the last step (``B(h) = -inf`` times an absent sum); we drop the absent sum and
return the x0 prediction there, as ``bh2`` does.
"""

from __future__ import annotations

import math

import numpy as np

from ddpm_export.diffusion.config import UNIPC_SOLVER_TYPES
from ddpm_export.diffusion.multistep import MultistepScheduler

__all__ = ["UniPCMultistepScheduler"]


class UniPCMultistepScheduler(MultistepScheduler):
    """UniPC multistep. Reads ``solver_order``, ``solver_type`` (bh1 | bh2), ``predict_x0``,
    ``lower_order_final``, ``disable_corrector``, ``use_karras_sigmas``, ``final_sigmas_type``,
    ``prediction_type``, ``timestep_spacing``, ``steps_offset``."""

    SOLVER_TYPES = UNIPC_SOLVER_TYPES
    ROUND_COSINE_KARRAS = True

    def reset(self) -> None:
        super().reset()
        self.last_sample: np.ndarray | None = None  # the (corrected) input of the previous step
        self.this_order = 0  # the predictor order of the previous step

    def step_order(self, i: int) -> int:
        """The predictor order of step ``i``: warm-up, and ``lower_order_final`` near the end."""
        order = self.config.solver_order
        if self.config.lower_order_final:
            order = min(order, len(self.timesteps) - i)
        return min(order, i + 1)

    def step(
        self, model_output: np.ndarray, t: int, x_t: np.ndarray, noise: np.ndarray | None = None
    ) -> np.ndarray:
        """Correct ``x_t`` with this output (UniC), then predict the next sample (UniP); float32."""
        i = self._begin_step(model_output, t, x_t, noise)
        converted = self._x0_or_eps(model_output, x_t, self.config.predict_x0)
        x = np.asarray(x_t, dtype=np.float64)
        if i > 0 and (i - 1) not in self.config.disable_corrector and self.last_sample is not None:
            x = self._update(i - 1, self.this_order, self.last_sample, converted)
        self._push(converted)
        self.this_order = self.step_order(i)
        self.last_sample = x
        x_prev = self._update(i, self.this_order, x, None)
        self.step_index += 1
        return x_prev.astype(np.float32)

    def _update(self, i: int, order: int, x: np.ndarray, m_t: np.ndarray | None) -> np.ndarray:
        """From ``sigmas[i]`` to ``sigmas[i + 1]`` at ``order``: UniP with ``m_t=None``, else UniC
        with the new output ``m_t`` (then the history does not hold ``m_t`` yet)."""
        alpha_t, sigma_t, lam_t = self._level(i + 1)
        alpha_s, sigma_s, lam_s = self._level(i)
        h = lam_t - lam_s  # +inf when landing on sigma = 0
        m = self.model_outputs
        m0 = m[-1]
        rks = [(self._level(i - k)[2] - lam_s) / h for k in range(1, order)]
        D = [(m[-(k + 1)] - m0) / rk for k, rk in zip(range(1, order), rks)]
        hh = -h if self.config.predict_x0 else h
        h_phi_1 = math.expm1(hh)
        B_h = hh if self.solver_type == "bh1" else math.expm1(hh)
        if self.config.predict_x0:
            base, scale = sigma_t / sigma_s * x - alpha_t * h_phi_1 * m0, alpha_t * B_h
        else:
            base, scale = alpha_t / alpha_s * x - sigma_t * h_phi_1 * m0, sigma_t * B_h
        if m_t is None:
            if not D:
                return base
            rhos = [0.5] if order == 2 else self._rhos(rks + [1.0], hh, B_h, predictor=True)
            return base - scale * sum(r * d for r, d in zip(rhos, D))
        rhos = [0.5] if order == 1 else self._rhos(rks + [1.0], hh, B_h, predictor=False)
        corr = sum((r * d for r, d in zip(rhos[:-1], D)), np.zeros_like(m0))
        return base - scale * (corr + rhos[-1] * (m_t - m0))

    @staticmethod
    def _rhos(rks: list[float], hh: float, B_h: float, *, predictor: bool) -> list[float]:
        """Solve ``R rho = b`` (module doc) over the points ``rks`` (the last is 1); the predictor,
        which has no new output, solves the leading ``len(rks) - 1`` rows and columns."""
        h_phi_k = math.expm1(hh) / hh - 1.0
        factorial = 1
        R, b = [], []
        for k in range(1, len(rks) + 1):
            R.append([r ** (k - 1) for r in rks])
            b.append(h_phi_k * factorial / B_h)
            factorial *= k + 1
            h_phi_k = h_phi_k / hh - 1.0 / factorial
        R_, b_ = np.array(R), np.array(b)
        if predictor:
            R_, b_ = R_[:-1, :-1], b_[:-1]
        return [float(r) for r in np.linalg.solve(R_, b_)]
