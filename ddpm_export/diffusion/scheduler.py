"""What every sampler shares: the schedule, the visited timesteps, and the ``step`` contract.

The interface mirrors diffusers' schedulers so results can be compared line by line:
``set_timesteps(n)``, ``.timesteps`` and ``step(model_output, t, x_t, noise) -> x_prev``. Unlike
diffusers, a scheduler owns no random generator: the sampling loop draws every noise array
(see ``loop.py``) and hands it in, so every backend consumes identical noise.
"""

from __future__ import annotations

import abc

import numpy as np

from ddpm_export.diffusion.config import DiffusionConfig
from ddpm_export.diffusion.schedule import Schedule
from ddpm_export.diffusion.timesteps import previous_timesteps, spaced_timesteps
from ddpm_export.errors import BadInputError

__all__ = ["Scheduler"]


class Scheduler(abc.ABC):
    """Base of :class:`DDPMScheduler`, :class:`DDIMScheduler` and the multistep solvers
    (:class:`~ddpm_export.diffusion.multistep.MultistepScheduler`).

    Attributes:
        config: the :class:`DiffusionConfig` it was built from.
        schedule: betas, alphas and ``alphas_cumprod`` (``[T]`` float32).
        num_inference_steps: N, set by :meth:`set_timesteps` (initially ``config.num_inference_steps``).
        timesteps: ``[N]`` int64, descending: the timesteps the sampler visits.
    """

    def __init__(self, config: DiffusionConfig) -> None:
        self.config = config
        self.schedule = Schedule.from_config(config)
        self.set_timesteps(config.num_inference_steps)

    def set_timesteps(self, num_inference_steps: int) -> None:
        """Visit ``num_inference_steps`` timesteps, spaced by ``config.timestep_spacing``."""
        c = self.config
        self.timesteps = spaced_timesteps(
            c.num_train_timesteps, num_inference_steps, c.timestep_spacing, c.steps_offset
        )
        self.timesteps.setflags(write=False)
        self.num_inference_steps = num_inference_steps
        self._previous = previous_timesteps(self.timesteps)

    def reset(self) -> None:
        """Forget any state of a previous run (the multistep solvers' history; DDPM and DDIM
        have none). :func:`ddpm_export.diffusion.sample` calls it before the first step."""

    def previous_timestep(self, t: int) -> int:
        """The timestep visited after ``t`` (``t - T // N`` for leading spacing), -1 after the last."""
        try:
            return self._previous[int(t)]
        except KeyError:
            raise BadInputError(
                f"t={t} is not one of the {self.num_inference_steps} timesteps this scheduler "
                f"visits ({self.timesteps[0]} .. {self.timesteps[-1]}); use .timesteps"
            ) from None

    def abar_prev(self, t: int) -> float:
        """``abar`` of the timestep visited after ``t``; 1 past the end (no noise left)."""
        prev_t = self.previous_timestep(t)
        return float(self.schedule.alphas_cumprod[prev_t]) if prev_t >= 0 else 1.0

    @abc.abstractmethod
    def step(
        self, model_output: np.ndarray, t: int, x_t: np.ndarray, noise: np.ndarray | None = None
    ) -> np.ndarray:
        """One reverse step ``x_t -> x_prev``.

        Args:
            model_output: ``[B, C, H, W]`` float32, the network's output at ``(x_t, t)``, read
                according to ``config.prediction_type``.
            t: the current timestep, one of :attr:`timesteps`.
            x_t: ``[B, C, H, W]`` float32.
            noise: ``[B, C, H, W]`` float32 standard normal; required when this step is
                stochastic, unused when it is not (:meth:`uses_noise`).

        Returns:
            ``x_prev``: ``[B, C, H, W]`` float32 (computed in float64, rounded once).
        """

    @abc.abstractmethod
    def uses_noise(self, t: int) -> bool:
        """Whether :meth:`step` at ``t`` adds noise (and so needs ``noise``)."""

    def _check_step_args(
        self, model_output: np.ndarray, t: int, x_t: np.ndarray, noise: np.ndarray | None
    ) -> None:
        if model_output.shape != x_t.shape:
            raise BadInputError(
                f"model_output has shape {model_output.shape} but x_t has {x_t.shape}; "
                "learned-variance outputs (2C channels) are not supported"
            )
        if self.uses_noise(t):
            if noise is None:
                raise BadInputError(f"{type(self).__name__}.step at t={t} is stochastic and needs noise")
            if noise.shape != x_t.shape:
                raise BadInputError(f"noise has shape {noise.shape} but x_t has {x_t.shape}")
