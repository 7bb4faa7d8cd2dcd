"""Build the sampler a config names: ``make_scheduler(config)``."""

from __future__ import annotations

from ddpm_export.checks import Registry
from ddpm_export.diffusion.config import DiffusionConfig, SamplerName
from ddpm_export.diffusion.ddim import DDIMScheduler
from ddpm_export.diffusion.ddpm import DDPMScheduler
from ddpm_export.diffusion.scheduler import Scheduler

__all__ = ["SCHEDULERS", "make_scheduler"]

#: Sampler name -> scheduler class; an unknown name is refused with the choices.
SCHEDULERS: Registry[type[Scheduler]] = Registry("sampler", {"ddim": DDIMScheduler, "ddpm": DDPMScheduler})


def make_scheduler(config: DiffusionConfig, sampler: SamplerName | None = None) -> Scheduler:
    """The scheduler for ``sampler`` (default ``config.sampler``), set to ``config.num_inference_steps``."""
    return SCHEDULERS[config.sampler if sampler is None else sampler](config)
