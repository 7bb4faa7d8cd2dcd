"""DiffusionConfig: the noise schedule and the sampler defaults as validated switches.

Defaults follow diffusers' ``DDPMScheduler`` / ``DDIMScheduler`` (linear betas 1e-4..0.02 over
T = 1000, epsilon prediction, ``fixed_small`` variance, x0 clipped to [-1, 1], ``leading``
timestep spacing). One config serves both samplers; each field says which sampler reads it.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from ddpm_export.configbase import ConfigError, FrozenConfig, check
from ddpm_export.diffusion.timesteps import TimestepSpacing, spaced_timesteps

BetaSchedule = Literal["linear", "scaled_linear", "cosine"]
PredictionType = Literal["epsilon", "sample", "v_prediction"]
VarianceType = Literal["fixed_small", "fixed_large"]
SamplerName = Literal["ddim", "ddpm"]

__all__ = [
    "BetaSchedule",
    "ConfigError",
    "DiffusionConfig",
    "PredictionType",
    "SamplerName",
    "TimestepSpacing",
    "VarianceType",
]


@dataclasses.dataclass(frozen=True)
class DiffusionConfig(FrozenConfig):
    """Forward-process schedule, model parameterisation and reverse-process sampler.

    ``beta_schedule="cosine"`` is diffusers' ``squaredcos_cap_v2`` (Nichol & Dhariwal 2021); it
    is defined by its ``abar(t)`` curve alone and does not read ``beta_start`` / ``beta_end``.
    """

    version: int = 1
    # --- forward process (training) --------------------------------------------------------
    num_train_timesteps: int = 1000             # T; valid timesteps are 0 .. T-1
    beta_schedule: BetaSchedule = "linear"
    beta_start: float = 1e-4                    # beta_0 of linear / scaled_linear
    beta_end: float = 0.02                      # beta_{T-1} of linear / scaled_linear
    prediction_type: PredictionType = "epsilon"  # what the network outputs: eps, x0 or v
    # --- reverse process -------------------------------------------------------------------
    variance_type: VarianceType = "fixed_small"  # DDPM: beta~_t (Ho eq. 7) or beta_t
    clip_sample: bool = True                    # clip the predicted x0 (both samplers)
    clip_sample_range: float = 1.0              # ... to [-range, range]
    timestep_spacing: TimestepSpacing = "leading"  # how N inference steps pick from 0 .. T-1
    steps_offset: int = 0                       # added to every leading-spaced timestep
    set_alpha_to_one: bool = True               # DDIM: abar before the last step is 1 (else abar_0)
    # --- sampler defaults used by the runtime ----------------------------------------------
    sampler: SamplerName = "ddim"
    num_inference_steps: int = 50               # N
    eta: float = 0.0                            # DDIM: 0 deterministic, 1 DDPM-like noise

    def validate(self) -> None:
        T = self.num_train_timesteps
        check(T >= 2, "num_train_timesteps", f"must be >= 2, got {T}")
        if self.beta_schedule != "cosine":
            check(0.0 < self.beta_start < 1.0, "beta_start", f"must be in (0, 1), got {self.beta_start}")
            check(0.0 < self.beta_end < 1.0, "beta_end", f"must be in (0, 1), got {self.beta_end}")
            check(self.beta_start <= self.beta_end, "beta_end",
                  f"must be >= beta_start={self.beta_start}, got {self.beta_end}")
        check(self.clip_sample_range > 0.0, "clip_sample_range", f"must be > 0, got {self.clip_sample_range}")
        check(self.steps_offset >= 0, "steps_offset", f"must be >= 0, got {self.steps_offset}")
        # diffusers silently ignores steps_offset with trailing spacing; we refuse it instead.
        check(self.steps_offset == 0 or self.timestep_spacing == "leading", "steps_offset",
              f"only applies to timestep_spacing='leading' (trailing spacing ends at T-1 by "
              f"construction); got steps_offset={self.steps_offset} with "
              f"timestep_spacing={self.timestep_spacing!r}, set it to 0")
        n = self.num_inference_steps
        check(1 <= n <= T, "num_inference_steps", f"must be in [1, num_train_timesteps={T}], got {n}")
        try:
            spaced_timesteps(T, n, self.timestep_spacing, self.steps_offset)
        except ValueError as e:
            raise ConfigError(f"steps_offset: {e}") from e
        check(0.0 <= self.eta <= 1.0, "eta", f"must be in [0, 1], got {self.eta}")
