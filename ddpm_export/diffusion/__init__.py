"""The diffusion math, once, in numpy: schedules, DDPM / DDIM steps and the sampling loop.

Imports no torch (a test proves it): this package and :mod:`ddpm_export.runtime` are all an
edge app needs besides one inference engine. Every backend runs through :func:`sample` with
the same noise; the steps equal diffusers' ``DDPMScheduler`` / ``DDIMScheduler`` to < 1e-6.
"""

from ddpm_export.diffusion.config import DiffusionConfig
from ddpm_export.diffusion.ddim import DDIMScheduler
from ddpm_export.diffusion.ddpm import DDPMScheduler
from ddpm_export.diffusion.loop import Backend, StepCallback, guided_output, noise_generator, sample
from ddpm_export.diffusion.samplers import SCHEDULERS, make_scheduler
from ddpm_export.diffusion.schedule import Schedule
from ddpm_export.diffusion.scheduler import Scheduler
from ddpm_export.diffusion.timesteps import spaced_timesteps

__all__ = [
    "SCHEDULERS",
    "Backend",
    "DDIMScheduler",
    "DDPMScheduler",
    "DiffusionConfig",
    "Schedule",
    "Scheduler",
    "StepCallback",
    "guided_output",
    "make_scheduler",
    "noise_generator",
    "sample",
    "spaced_timesteps",
]
