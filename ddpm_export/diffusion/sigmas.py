"""The noise levels a multistep solver steps through: ``sigma``, ``alpha``, ``lambda`` (numpy, float64).

The solvers of Lu et al. 2022 (DPM-Solver, arXiv:2206.00927; DPM-Solver++, arXiv:2211.01095) and
Zhao et al. 2023 (UniPC, arXiv:2302.04867) integrate the probability-flow ODE in the half-log-SNR
``lambda = log(alpha_t / sigma_t)``. With the VP process ``x_t = alpha_t x_0 + sigma_t eps``,
``alpha_t = sqrt(abar_t)``, ``sigma_t = sqrt(1 - abar_t)``, diffusers parameterises each level by
the VE sigma ``sigma = sigma_t / alpha_t = sqrt((1 - abar) / abar)``, from which

    alpha_t = 1 / sqrt(sigma^2 + 1),    sigma_t = sigma * alpha_t,    lambda = log alpha_t - log sigma_t

(diffusers' ``_sigma_to_alpha_sigma_t``). A solver with N steps visits N timesteps and N + 1
sigmas: the N of its timesteps and a final one, 0 (``final_sigmas_type="zero"``: the last step
returns the x0 prediction) or ``sigma(t = 0)`` (``"sigma_min"``).

With ``use_karras_sigmas`` the N sigmas are Karras et al. 2022 (eq. 5, rho = 7) between
``sigma(t = 0)`` and ``sigma(T - 1)``; the timestep the network sees for each is found by
interpolating ``log sigma`` over the trained timesteps (diffusers' ``_sigma_to_t``).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from ddpm_export.configbase import ConfigError
from ddpm_export.diffusion.config import DiffusionConfig
from ddpm_export.diffusion.schedule import Schedule
from ddpm_export.diffusion.timesteps import solver_timesteps

__all__ = ["KARRAS_RHO", "SolverSchedule", "alpha_sigma", "karras_sigmas", "log_snr", "sigma_to_t", "ve_sigmas"]

#: Karras et al. 2022's rho (their eq. 5 and Table 1), as diffusers.
KARRAS_RHO = 7.0


def ve_sigmas(alphas_cumprod: np.ndarray) -> np.ndarray:
    """``sigma_t = sqrt((1 - abar_t) / abar_t)`` for every trained timestep: ``[T]`` float64."""
    abar = np.asarray(alphas_cumprod, dtype=np.float64)
    return np.sqrt((1.0 - abar) / abar)


def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = KARRAS_RHO) -> np.ndarray:
    """Karras et al. 2022 eq. 5: ``(max^(1/rho) + i/(n-1) (min^(1/rho) - max^(1/rho)))^rho``, ``[n]`` descending."""
    ramp = np.linspace(0, 1, n)
    min_inv, max_inv = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (max_inv + ramp * (min_inv - max_inv)) ** rho


def sigma_to_t(sigma: float, log_sigmas: np.ndarray) -> float:
    """The fractional timestep whose ``log sigma`` is ``log(sigma)``, by linear interpolation
    between the two trained timesteps around it (clamped to ``[0, T-1]``; diffusers' ``_sigma_to_t``)."""
    log_sigma = math.log(max(sigma, 1e-10))
    dists = log_sigma - log_sigmas
    low = min(int(np.cumsum(dists >= 0).argmax()), log_sigmas.shape[0] - 2)
    lo, hi = log_sigmas[low], log_sigmas[low + 1]
    w = min(max((lo - log_sigma) / (lo - hi), 0.0), 1.0)
    return (1 - w) * low + w * (low + 1)


def alpha_sigma(sigma: float) -> tuple[float, float]:
    """``(alpha_t, sigma_t)`` of the VE sigma: ``1 / sqrt(sigma^2 + 1)`` and ``sigma * alpha_t``."""
    alpha = 1.0 / math.sqrt(sigma**2 + 1.0)
    return alpha, sigma * alpha


def log_snr(sigma: float) -> float:
    """``lambda = log alpha_t - log sigma_t``; ``+inf`` at sigma = 0 (the clean end)."""
    alpha, sigma_t = alpha_sigma(sigma)
    return math.inf if sigma_t == 0.0 else math.log(alpha) - math.log(sigma_t)


@dataclasses.dataclass(frozen=True)
class SolverSchedule:
    """``timesteps`` ``[N]`` int64 (what the network sees) and ``sigmas`` ``[N + 1]`` float64 (descending)."""

    timesteps: np.ndarray
    sigmas: np.ndarray

    @classmethod
    def build(cls, config: DiffusionConfig, schedule: Schedule, n: int, *, round_cosine: bool) -> "SolverSchedule":
        """The N timesteps and N + 1 sigmas of a solver with ``n`` steps (see the module doc).

        ``round_cosine``: how Karras timesteps of the cosine schedule become integers. diffusers'
        UniPC rounds them, its DPM-Solver truncates them (it rounds only for other schedules); we
        keep each so the network sees the timestep it sees in diffusers.
        """
        all_sigmas = ve_sigmas(schedule.alphas_cumprod)
        timesteps, sigmas = _solver_steps(config, all_sigmas, n, round_cosine)
        if (np.diff(sigmas) >= 0).any():
            _refuse_zero_steps(config, all_sigmas, n, sigmas, round_cosine)
        for a in (timesteps, sigmas):
            a.setflags(write=False)
        return cls(timesteps, sigmas)


def _solver_steps(config: DiffusionConfig, all_sigmas: np.ndarray, n: int,
                  round_cosine: bool) -> tuple[np.ndarray, np.ndarray]:
    """:meth:`SolverSchedule.build`'s timesteps ``[n]`` and sigmas ``[n + 1]``, unchecked."""
    if config.use_karras_sigmas:
        log_sigmas = np.log(all_sigmas)
        sigmas = karras_sigmas(float(all_sigmas[0]), float(all_sigmas[-1]), n)
        t = np.array([sigma_to_t(float(s), log_sigmas) for s in sigmas])
        if round_cosine or config.beta_schedule != "cosine":
            t = t.round()
        timesteps = t.astype(np.int64)
    else:
        timesteps = solver_timesteps(config.num_train_timesteps, n, config.timestep_spacing, config.steps_offset)
        sigmas = all_sigmas[timesteps]
    last = float(all_sigmas[0]) if config.final_sigmas_type == "sigma_min" else 0.0
    return timesteps, np.concatenate([sigmas, [last]]).astype(np.float64)


def _refuse_zero_steps(config: DiffusionConfig, all_sigmas: np.ndarray, n: int, sigmas: np.ndarray,
                       round_cosine: bool) -> None:
    """ConfigError for two consecutive equal ``sigmas``: a step of zero length, whose log-SNR
    difference h = 0 the solvers divide by (diffusers returns NaN there). It happens with ``n``
    close to the training steps (``linspace`` rounds two points to one timestep) and with
    ``final_sigmas_type="sigma_min"`` when the last visited timestep is 0. The message names the
    most steps below ``n`` that these settings can take."""
    k = int(np.flatnonzero(np.diff(sigmas) >= 0)[0])
    last = k + 1 == len(sigmas) - 1 and config.final_sigmas_type == "sigma_min"
    fits = next((m for m in range(n - 1, 0, -1)
                 if (np.diff(_solver_steps(config, all_sigmas, m, round_cosine)[1]) < 0).all()), None)
    fewer = "fewer steps" if fits is None else f"at most {fits} steps"
    # dpm-solver (noise prediction) and UniPC without predict_x0 must end at sigma_min (config.py)
    must_end_at_min = config.sampler == "dpm-solver" or (config.sampler == "unipc" and not config.predict_x0)
    advice = (f"final_sigmas_type='zero', or {fewer}" if last and not must_end_at_min else
              fewer + (", or timestep_spacing='leading' or 'trailing'" if config.timestep_spacing == "linspace" else ""))
    raise ConfigError(f"num_inference_steps={n} with timestep_spacing={config.timestep_spacing!r}"
                      f"{', final_sigmas_type=' + repr(config.final_sigmas_type) if last else ''}: solver steps {k} and "
                      f"{k + 1} have the same sigma ({sigmas[k]:.6g}), a step of zero length the solver cannot take "
                      f"(it divides by the step's log-SNR difference); use {advice}")
