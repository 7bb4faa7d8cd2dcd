"""The diffusion math, once, in numpy: schedules, DDPM / DDIM / DPM-Solver / UniPC steps, the loop.

Imports no torch (a test proves it): this package and :mod:`ddpm_export.runtime` are all an
edge app needs besides one inference engine. Every backend runs through :func:`sample` with
the same noise; the steps equal diffusers' ``DDPMScheduler`` / ``DDIMScheduler`` /
``DPMSolverMultistepScheduler`` / ``UniPCMultistepScheduler`` to < 1e-6.
"""

from ddpm_export.diffusion.config import DiffusionConfig
from ddpm_export.diffusion.ddim import DDIMScheduler
from ddpm_export.diffusion.ddpm import DDPMScheduler
from ddpm_export.diffusion.dpm_solver import DPMSolverMultistepScheduler
from ddpm_export.diffusion.loop import Backend, StepCallback, guided_output, noise_generator, sample
from ddpm_export.diffusion.samplers import SCHEDULERS, make_scheduler, sampler_config, sampler_defaults
from ddpm_export.diffusion.schedule import Schedule
from ddpm_export.diffusion.scheduler import Scheduler
from ddpm_export.diffusion.timesteps import solver_timesteps, spaced_timesteps
from ddpm_export.diffusion.unipc import UniPCMultistepScheduler

__all__ = [
    "SCHEDULERS",
    "Backend",
    "DDIMScheduler",
    "DDPMScheduler",
    "DPMSolverMultistepScheduler",
    "DiffusionConfig",
    "Schedule",
    "Scheduler",
    "StepCallback",
    "UniPCMultistepScheduler",
    "guided_output",
    "make_scheduler",
    "noise_generator",
    "sample",
    "sampler_config",
    "sampler_defaults",
    "solver_timesteps",
    "spaced_timesteps",
]
