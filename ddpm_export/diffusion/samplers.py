"""Build the sampler a config names: ``make_scheduler(config)``."""

from __future__ import annotations

from ddpm_export.diffusion.config import DiffusionConfig, SamplerName
from ddpm_export.diffusion.ddim import DDIMScheduler
from ddpm_export.diffusion.ddpm import DDPMScheduler
from ddpm_export.diffusion.scheduler import Scheduler
from ddpm_export.errors import BadInputError

__all__ = ["SCHEDULERS", "make_scheduler"]

#: Sampler name -> scheduler class.
SCHEDULERS: dict[str, type[Scheduler]] = {"ddim": DDIMScheduler, "ddpm": DDPMScheduler}


def make_scheduler(config: DiffusionConfig, sampler: SamplerName | None = None) -> Scheduler:
    """The scheduler for ``sampler`` (default ``config.sampler``), set to ``config.num_inference_steps``."""
    name = config.sampler if sampler is None else sampler
    if name not in SCHEDULERS:
        listed = ", ".join(repr(s) for s in SCHEDULERS)
        raise BadInputError(f"sampler={name!r} is not valid; choose one of: {listed}")
    return SCHEDULERS[name](config)
