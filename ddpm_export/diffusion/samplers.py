"""Build the sampler a config names: ``make_scheduler(config)``.

The registry :data:`SCHEDULERS` maps every sampler name (``ddpm-export sample --sampler``,
``Pipeline.sample(sampler=...)``) to its scheduler class. The DPM-Solver names also fix
fields of the config (:data:`~ddpm_export.diffusion.config.SAMPLER_PRESETS`: ``dpm-solver++``
is ``algorithm_type="dpmsolver++"``); :func:`sampler_config` applies them.
"""

from __future__ import annotations

from typing import Any

from ddpm_export.checks import Registry
from ddpm_export.diffusion.config import SAMPLER_PRESETS, SOLVER_TYPES, DiffusionConfig, SamplerName
from ddpm_export.diffusion.ddim import DDIMScheduler
from ddpm_export.diffusion.ddpm import DDPMScheduler
from ddpm_export.diffusion.dpm_solver import DPMSolverMultistepScheduler
from ddpm_export.diffusion.scheduler import Scheduler
from ddpm_export.diffusion.unipc import UniPCMultistepScheduler

__all__ = ["SAMPLER_FIELDS", "SCHEDULERS", "make_scheduler", "sampler_config", "sampler_defaults"]

#: Sampler name -> scheduler class; an unknown name is refused with the choices.
SCHEDULERS: Registry[type[Scheduler]] = Registry("sampler", {
    "ddim": DDIMScheduler,
    "ddpm": DDPMScheduler,
    "dpm-solver++": DPMSolverMultistepScheduler,
    "dpm-solver": DPMSolverMultistepScheduler,
    "sde-dpm-solver++": DPMSolverMultistepScheduler,
    "unipc": UniPCMultistepScheduler,
})

_DPM_FIELDS = ("algorithm_type", "solver_order", "solver_type", "lower_order_final", "use_karras_sigmas",
               "final_sigmas_type")
#: Sampler name -> its own switches in DiffusionConfig (besides the schedule, prediction type,
#: clipping, timestep spacing and num_inference_steps); what a bundle records as sampler defaults.
SAMPLER_FIELDS: dict[str, tuple[str, ...]] = {
    "ddim": ("eta",),
    "ddpm": ("variance_type",),
    "dpm-solver++": _DPM_FIELDS,
    "dpm-solver": _DPM_FIELDS,
    "sde-dpm-solver++": _DPM_FIELDS,
    "unipc": ("solver_order", "solver_type", "predict_x0", "lower_order_final", "disable_corrector",
              "use_karras_sigmas", "final_sigmas_type"),
}


def sampler_config(config: DiffusionConfig, sampler: SamplerName, **changes: Any) -> DiffusionConfig:
    """``config`` switched to ``sampler``, with the fields that name fixes (``SAMPLER_PRESETS``)
    and ``changes`` (e.g. ``num_inference_steps``), validated once as a whole. A ``solver_type`` of
    the other solver family (a UniPC file's ``bh1`` for DPM-Solver) becomes that sampler's default:
    it refused every sampler of the other family, and no option could clear it."""
    SCHEDULERS[sampler]  # refuses an unknown name, listing the choices
    choices = SOLVER_TYPES.get(sampler)
    family = {"solver_type": None} if choices is not None and config.solver_type not in (None, *choices) else {}
    return config.replace(**{**family, **changes, "sampler": sampler, **SAMPLER_PRESETS.get(sampler, {})})


def make_scheduler(config: DiffusionConfig, sampler: SamplerName | None = None, **changes: Any) -> Scheduler:
    """The scheduler for ``sampler`` (default ``config.sampler``) with ``changes`` to the config
    (e.g. ``num_inference_steps``), validated once as that sampler's config."""
    name = config.sampler if sampler is None else sampler
    return SCHEDULERS[name](sampler_config(config, name, **changes))


def sampler_defaults(config: DiffusionConfig) -> dict[str, Any]:
    """``config``'s sampler, steps, DDIM's eta and every field its sampler reads (JSON types)."""
    out: dict[str, Any] = {"sampler": config.sampler, "num_inference_steps": config.num_inference_steps,
                           "eta": config.eta}
    for field in SAMPLER_FIELDS[config.sampler]:
        value = getattr(config, field)
        out[field] = list(value) if isinstance(value, tuple) else value
    return out
