"""What the multistep solvers (DPM-Solver, UniPC) share: sigmas, the step counter, the history.

A multistep solver reuses the converted model outputs of its last ``solver_order - 1`` steps, so
unlike DDPM and DDIM it has state. The state lives in the scheduler and :meth:`reset` (called by
:meth:`set_timesteps` and at the start of every :func:`ddpm_export.diffusion.sample`) clears it.
One scheduler therefore serves one sampling run at a time: :class:`~ddpm_export.runtime.Pipeline`
builds a fresh one per call and chunk, so threads may share a Pipeline.

Steps must follow :attr:`timesteps` in order (diffusers counts steps the same way, which also
handles the repeated timesteps that Karras sigmas can produce).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from ddpm_export.configbase import ConfigError
from ddpm_export.diffusion.config import DiffusionConfig
from ddpm_export.diffusion.prediction import split_prediction
from ddpm_export.diffusion.scheduler import Scheduler
from ddpm_export.diffusion.sigmas import SolverSchedule, alpha_sigma, log_snr
from ddpm_export.errors import BadInputError

__all__ = ["MultistepScheduler"]


class MultistepScheduler(Scheduler):
    """Base of :class:`DPMSolverMultistepScheduler` and :class:`UniPCMultistepScheduler`.

    Attributes (besides :class:`Scheduler`'s):
        sigmas: ``[N + 1]`` float64, the VE sigma of every visited timestep and the final one.
        solver_type: ``config.solver_type`` or the solver's default.
        step_index: steps taken since the last :meth:`reset`.
    """

    #: solver_type choices, the first being the default (``config.solver_type=None``)
    SOLVER_TYPES: ClassVar[tuple[str, ...]]
    #: how Karras timesteps of the cosine schedule become integers (see SolverSchedule.build)
    ROUND_COSINE_KARRAS: ClassVar[bool]

    def __init__(self, config: DiffusionConfig) -> None:
        chosen = config.solver_type or self.SOLVER_TYPES[0]
        if chosen not in self.SOLVER_TYPES:
            raise ConfigError(f"solver_type={chosen!r} is not valid for {type(self).__name__}; choose one of: "
                              f"{', '.join(repr(s) for s in self.SOLVER_TYPES)} (or None for {self.SOLVER_TYPES[0]!r})")
        self.solver_type = chosen
        super().__init__(config)

    def set_timesteps(self, num_inference_steps: int) -> None:
        """Visit ``num_inference_steps`` timesteps (see :class:`SolverSchedule`); clears the history."""
        solver = SolverSchedule.build(self.config, self.schedule, num_inference_steps,
                                      round_cosine=self.ROUND_COSINE_KARRAS)
        self.timesteps, self.sigmas = solver.timesteps, solver.sigmas
        self.num_inference_steps = num_inference_steps
        self.reset()

    def reset(self) -> None:
        """Forget the history: the next step is step 0 at ``timesteps[0]``."""
        self.step_index = 0
        self.model_outputs: list[np.ndarray] = []  # converted outputs, oldest first, <= solver_order

    # --- the Scheduler contract by step index ------------------------------------------------
    def _index(self, t: int) -> int:
        hits = np.flatnonzero(self.timesteps == int(t))
        if hits.size == 0:
            raise BadInputError(f"t={t} is not one of the {self.num_inference_steps} timesteps this scheduler "
                             f"visits ({self.timesteps[0]} .. {self.timesteps[-1]}); use .timesteps")
        return int(hits[0])

    def previous_timestep(self, t: int) -> int:
        """The timestep visited after ``t`` (its first visit), -1 after the last."""
        i = self._index(t) + 1
        return int(self.timesteps[i]) if i < len(self.timesteps) else -1

    def abar_prev(self, t: int) -> float:
        """``abar`` of the noise level the step at ``t`` lands on: ``1 / (1 + sigma_next^2)``."""
        return 1.0 / (1.0 + float(self.sigmas[self._index(t) + 1]) ** 2)

    def uses_noise(self, t: int) -> bool:
        return False

    # --- helpers for the solvers ------------------------------------------------------------
    def _begin_step(self, model_output: np.ndarray, t: int, x_t: np.ndarray, noise: np.ndarray | None) -> int:
        """Check the arguments and that ``t`` is the next timestep; returns the step index."""
        self._check_step_args(model_output, t, x_t, noise)
        i = self.step_index
        if i >= len(self.timesteps) or int(t) != int(self.timesteps[i]):
            expected = "none (all steps taken)" if i >= len(self.timesteps) else f"t={int(self.timesteps[i])}"
            raise BadInputError(f"{type(self).__name__} is a multistep solver: its steps must follow .timesteps in "
                             f"order; step {i} expects {expected}, got t={t} (reset() starts over)")
        return i

    def _level(self, j: int) -> tuple[float, float, float]:
        """``(alpha_t, sigma_t, lambda)`` of ``sigmas[j]``."""
        sigma = float(self.sigmas[j])
        alpha, sigma_t = alpha_sigma(sigma)
        return alpha, sigma_t, log_snr(sigma)

    def _x0_or_eps(self, model_output: np.ndarray, x_t: np.ndarray, want_x0: bool) -> np.ndarray:
        """The model output as the solver's variable at the current sigma: x0 (data prediction,
        "++") or eps (noise prediction); float64 ``[B, C, H, W]``. No clipping (diffusers' solvers
        offer thresholding instead, which we do not)."""
        alpha, sigma_t, _ = self._level(self.step_index)
        x0, eps = split_prediction(model_output, x_t, alpha, sigma_t, self.config.prediction_type)
        return x0 if want_x0 else eps

    def _push(self, converted: np.ndarray) -> None:
        self.model_outputs = (self.model_outputs + [converted])[-self.config.solver_order:]
