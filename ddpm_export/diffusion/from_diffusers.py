"""A diffusers scheduler config (``scheduler_config.json``) as a :class:`DiffusionConfig` (torch-free).

A diffusers ``UNet2DModel`` folder saved by ``DDPMPipeline.save_pretrained`` sits beside its
scheduler (``<pipeline>/unet/`` and ``<pipeline>/scheduler/scheduler_config.json``); a folder
may also hold its ``scheduler_config.json`` itself. The noise schedule decides what every
sampled image is, so it is read, not assumed: a cosine / v-prediction model sampled on the
default linear / epsilon schedule gives wrong images that still "verify" (both sides share the
wrong schedule).

What is read, with diffusers' names and each class's own defaults for keys a file leaves out:

- the forward process: ``num_train_timesteps``, ``beta_start``, ``beta_end``, ``beta_schedule``
  (``squaredcos_cap_v2`` is our ``cosine``), ``prediction_type``;
- the reverse process: ``variance_type`` (``fixed_small[_log]``, ``fixed_large[_log]``:
  ``fixed_small_log`` computes the same standard deviation as ``fixed_small``; diffusers'
  ``fixed_large_log`` step returns NaN (it raises log(beta) < 0 to the power 0.5), and it is read
  as ``fixed_large``, std sqrt(beta), what the name means), ``clip_sample``, ``clip_sample_range``,
  ``timestep_spacing``, ``steps_offset`` (dropped with other than leading spacing, as diffusers
  ignores it there), ``set_alpha_to_one``;
- the sampler, for the classes this package runs: ``DDIMScheduler`` -> ``ddim``,
  ``DPMSolverMultistepScheduler`` -> ``dpm-solver++`` / ``dpm-solver`` / ``sde-dpm-solver++`` by
  ``algorithm_type``, ``UniPCMultistepScheduler`` -> ``unipc``, each with its solver keys. The
  other classes of :data:`_CLASS_DEFAULTS` (``DDPMScheduler``, ``PNDMScheduler``, Euler, LMS,
  Heun, KDPM2, DEIS, single-step DPM-Solver) give the schedule only; the sampler stays
  :class:`DiffusionConfig`'s default (DDIM, 50 steps; with fewer than 50 training timesteps, the most
  steps the sampler takes). A class not listed there (IPNDM, whose
  schedule is its own, LCM, ...) or a file without ``_class_name`` is refused. Only DDPM's and
  DDIM's steps clip the predicted x0: every other class reads as ``clip_sample=False`` unless its
  file says otherwise (DDIM with clipping in an Euler model's place moved its samples by up to
  0.66 in an audit, 1.5e-3 without), and a ``fixed_*`` ``variance_type`` a scheduler swap carries
  over from a DDPM config is read for ``--sampler ddpm`` (learned variances are DDPM's only).

Files of diffusers before 0.12 may carry ``predict_epsilon`` (True: ``prediction_type`` epsilon,
False: sample, what those versions made of it; refused where it contradicts a ``prediction_type``
of the same file; diffusers today drops the key and samples a sample-predicting model as epsilon)
and ``tensor_format`` (torch or numpy tensors: ignored).

A key that changes the schedule in a way :class:`DiffusionConfig` cannot express (``trained_betas``,
``thresholding``, ``rescale_betas_zero_snr``, other sigma families, ...) set away from its
default, or a key this module does not know, is refused with :class:`SchedulerConfigError`
naming it; a ``diffusion.json`` in the model folder takes precedence and is the way to choose a
schedule by hand.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

from ddpm_export.configbase import ConfigError
from ddpm_export.diffusion.config import MAX_TRAIN_TIMESTEPS, DiffusionConfig
from ddpm_export.diffusion.samplers import make_scheduler
from ddpm_export.errors import BadInputError
from ddpm_export.jsonio import parse_json

__all__ = ["SAMPLER_CLASSES", "SCHEDULER_CONFIG_NAME", "SchedulerConfigError", "diffusion_from_scheduler",
           "find_scheduler_config", "schedule_only_class", "scheduler_timesteps"]

SCHEDULER_CONFIG_NAME = "scheduler_config.json"

#: diffusers' beta_schedule -> ours
_BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "scaled_linear", "squaredcos_cap_v2": "cosine"}
#: diffusers' DDPM variance_type -> ours (fixed_small_log: the same standard deviation; fixed_large_log:
#: NaN in diffusers' step, read as fixed_large -- see the module docstring)
_VARIANCE_TYPES = {"fixed_small": "fixed_small", "fixed_small_log": "fixed_small",
                   "fixed_large": "fixed_large", "fixed_large_log": "fixed_large"}
#: read as they are (same name, same meaning)
_SCHEDULE_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "prediction_type", "clip_sample",
                  "clip_sample_range", "timestep_spacing", "steps_offset", "set_alpha_to_one")
_SOLVER_KEYS = ("solver_order", "solver_type", "lower_order_final", "use_karras_sigmas", "final_sigmas_type",
                "predict_x0", "disable_corrector")
#: keys that must keep diffusers' default: what they change has no DiffusionConfig field
_MUST_BE_DEFAULT: dict[str, Any] = {
    "trained_betas": None, "thresholding": False, "rescale_betas_zero_snr": False,
    "use_exponential_sigmas": False, "use_beta_sigmas": False, "use_lu_lambdas": False, "use_flow_sigmas": False,
    "use_dynamic_shifting": False, "euler_at_final": False, "lambda_min_clipped": -math.inf, "solver_p": None,
    "sigma_min": None, "sigma_max": None, "shift_terminal": None,
}
#: keys with no effect here: bookkeeping, or settings of what the keys above keep off, or of
#: samplers this package does not run (Euler's ``timestep_type``: unless it is continuous with
#: v-prediction, which is refused, as the model then takes another timestep)
_IGNORED = ("_class_name", "_diffusers_version", "dynamic_thresholding_ratio", "sample_max_value", "flow_shift",
            "time_shift_type", "skip_prk_steps", "interpolation_type", "timestep_type", "variance_type",
            "tensor_format")
#: the scheduler classes read (their schedule is a beta schedule), each with its defaults where
#: they differ from DiffusionConfig's, for keys a file (an old one) may leave out; diffusers 0.42's
#: signatures (a test checks them). Other classes (IPNDM's own schedule, LCM, ...) are refused.
_LINSPACE = {"timestep_spacing": "linspace"}
_KARRAS_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "timestep_spacing": "linspace"}
_CLASS_DEFAULTS: dict[str, dict[str, Any]] = {
    "DDPMScheduler": {}, "DDIMScheduler": {}, "DPMSolverMultistepScheduler": _LINSPACE,
    "UniPCMultistepScheduler": _LINSPACE, "PNDMScheduler": {"set_alpha_to_one": False},
    "EulerDiscreteScheduler": _LINSPACE, "EulerAncestralDiscreteScheduler": _LINSPACE,
    "LMSDiscreteScheduler": _LINSPACE, "DEISMultistepScheduler": _LINSPACE, "DPMSolverSinglestepScheduler": {},
    "HeunDiscreteScheduler": _KARRAS_BETAS, "KDPM2DiscreteScheduler": _KARRAS_BETAS,
    "KDPM2AncestralDiscreteScheduler": _KARRAS_BETAS,
}
_DPM_SAMPLERS = {"dpmsolver++": "dpm-solver++", "dpmsolver": "dpm-solver", "sde-dpmsolver++": "sde-dpm-solver++"}
#: the classes whose step clips the predicted x0 (``clip_sample``, default True in diffusers)
_CLIPPING = ("DDPMScheduler", "DDIMScheduler")


def _shown(value: Any) -> str:
    """``value`` for a message: a long list as its length (trained_betas holds T floats), else its repr."""
    if isinstance(value, list) and len(value) > 8:
        return f"[{len(value)} values: {value[0]!r}, {value[1]!r}, ..., {value[-1]!r}]"
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "..."


def _listed(value: Any, names: dict[str, Any]) -> bool:
    """Whether ``value`` is one of the names ``names`` maps (a list or object is none: not hashable)."""
    return isinstance(value, str) and value in names


class SchedulerConfigError(BadInputError):
    """A diffusers scheduler config this package cannot reproduce; the message names the key."""


def find_scheduler_config(unet_folder: Path) -> Path | None:
    """The scheduler config of a diffusers UNet folder: its own ``scheduler_config.json``, else its
    pipeline's ``../scheduler/scheduler_config.json`` (the parent of the folder as given made
    absolute, then of its real path: ``.`` inside ``unet/``, a link to it); None when there is none."""
    own = unet_folder / SCHEDULER_CONFIG_NAME
    parents = dict.fromkeys((unet_folder.absolute().parent, unet_folder.resolve().parent))
    for path in (own, *(parent / "scheduler" / SCHEDULER_CONFIG_NAME for parent in parents)):
        if path.exists():  # a folder in its place too: its reader refuses it rather than the default schedule apply
            return path
    return None


def _read(path: Path) -> Any:
    """The JSON of the scheduler config at ``path`` (UTF-8, a byte-order mark allowed); OSError or
    ValueError (malformed or not UTF-8) when it cannot be read."""
    return parse_json(path.read_text(encoding="utf-8-sig"))


def scheduler_timesteps(unet_folder: Path) -> int | None:
    """``num_train_timesteps`` of the scheduler config :func:`find_scheduler_config` finds for
    ``unet_folder`` (diffusers' default 1000 when the file leaves it out); None without a readable
    one, or when it is no int or out of range (:func:`diffusion_from_scheduler` names that, and the
    scheduler's file: taken into the UNet's config, 10**30 was refused as the UNet's config.json's)."""
    path = find_scheduler_config(unet_folder)
    try:
        data = _read(path) if path is not None else None
    except (OSError, ValueError):
        return None
    T = data.get("num_train_timesteps", 1000) if isinstance(data, dict) else None
    return T if isinstance(T, int) and not isinstance(T, bool) and 2 <= T <= MAX_TRAIN_TIMESTEPS else None


#: the classes whose sampler this package runs (DDPM's as ``--sampler ddpm``; the others give
#: their schedule only)
SAMPLER_CLASSES = ("DDPMScheduler", "DDIMScheduler", "DPMSolverMultistepScheduler", "UniPCMultistepScheduler")


def schedule_only_class(path: Path) -> str | None:
    """The ``_class_name`` of the scheduler config at ``path`` when it is a class whose schedule is
    read but whose sampler this package does not run (Euler, PNDM, LMS, ...: the file's default
    sampler is DDIM); None otherwise or when unreadable."""
    try:
        cls = _read(path).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return None
    return cls if _listed(cls, _CLASS_DEFAULTS) and cls not in SAMPLER_CLASSES else None


def diffusion_from_scheduler(path: Path) -> DiffusionConfig:
    """The :class:`DiffusionConfig` of the diffusers scheduler config at ``path`` (see the module doc)."""
    try:
        data = _read(path)
    except (OSError, ValueError) as e:
        raise SchedulerConfigError(f"{path}: not a readable UTF-8 JSON file ({e})") from e
    if not isinstance(data, dict):
        raise SchedulerConfigError(f"{path}: a scheduler config is a JSON object, got {type(data).__name__}")
    cls = data.get("_class_name")
    if not _listed(cls, _CLASS_DEFAULTS):
        said = ("names no _class_name" if cls is None else
                f"_class_name={_shown(cls)} is not a scheduler class ddpm-export reads")
        raise SchedulerConfigError(f"{path}: {said} (known: {', '.join(_CLASS_DEFAULTS)}); write a diffusion.json "
                                   f"beside the UNet's config.json to choose the schedule yourself (a DiffusionConfig)")

    def refuse(key: str, why: str) -> SchedulerConfigError:
        return SchedulerConfigError(f"{path}: {key}={_shown(data[key])} {why}; write a diffusion.json beside the "
                                    f"UNet's config.json to choose the schedule yourself (a DiffusionConfig)")

    for key, default in _MUST_BE_DEFAULT.items():
        if key in data and data[key] != default:
            raise refuse(key, "is not supported (DiffusionConfig has no such setting)")
    known = {*_SCHEDULE_KEYS, *_SOLVER_KEYS, *_MUST_BE_DEFAULT, *_IGNORED, "beta_schedule", "algorithm_type",
             "predict_epsilon"}
    for key in data:
        if key not in known:
            raise refuse(key, "is a scheduler setting this version does not know")
    fields: dict[str, Any] = {**_CLASS_DEFAULTS[cls], **{k: data[k] for k in _SCHEDULE_KEYS if k in data}}
    if "predict_epsilon" in data:
        fields["prediction_type"] = _from_predict_epsilon(data, refuse)
    if "beta_schedule" in data:
        if not _listed(data["beta_schedule"], _BETA_SCHEDULES):
            raise refuse("beta_schedule", f"is not supported (choose one of: {', '.join(_BETA_SCHEDULES)})")
        fields["beta_schedule"] = _BETA_SCHEDULES[data["beta_schedule"]]
    if data.get("variance_type") is not None:  # another class's: carried over by a scheduler swap
        if not _listed(data["variance_type"], _VARIANCE_TYPES):  # learned(_range)
            raise refuse("variance_type", f"is not supported (choose one of: {', '.join(_VARIANCE_TYPES)})"
                         if cls == "DDPMScheduler" else f"of {cls} is not supported (a learned-variance model's "
                         f"samplers here are DDPM's; the solvers take the C channels of a plain prediction)")
        fields["variance_type"] = _VARIANCE_TYPES[data["variance_type"]]
    _check_timestep_type(data, fields.get("prediction_type"), refuse)
    if cls not in _CLIPPING and "clip_sample" not in data:
        fields["clip_sample"] = False  # its step never clips
    fields.update(_sampler_fields(cls, data, refuse))
    if fields.get("timestep_spacing", "leading") != "leading":
        fields.pop("steps_offset", None)  # diffusers ignores it there (Stable Diffusion's configs set 1)
    if "disable_corrector" in fields:
        if not isinstance(fields["disable_corrector"], list):
            raise refuse("disable_corrector", "is not a list of step indices")
        fields["disable_corrector"] = tuple(fields["disable_corrector"])
    T = fields.get("num_train_timesteps", DiffusionConfig.num_train_timesteps)
    if isinstance(T, int) and not isinstance(T, bool) and 2 <= T < DiffusionConfig.num_inference_steps:
        fields["num_inference_steps"] = _most_steps(fields, T, str(path))
    try:
        return DiffusionConfig.from_dict(fields, source=str(path))
    except ConfigError as e:
        raise SchedulerConfigError(f"{e}; write a diffusion.json beside the UNet's config.json to choose the "
                                   f"schedule yourself") from e


def _most_steps(fields: dict[str, Any], T: int, source: str) -> int:
    """The most inference steps, at most ``T``, that the file's sampler takes: a scheduler config has no
    step count, and DiffusionConfig's default (50) is more than a schedule of ``T`` < 50 timesteps has
    (a T = 20 file was refused for a num_inference_steps it does not hold); 1 when none is taken (the
    config's own error then names what else is wrong)."""
    for n in range(T, 1, -1):
        try:  # the scheduler too: it refuses steps of zero length (linspace repeating a timestep)
            make_scheduler(DiffusionConfig.from_dict({**fields, "num_inference_steps": n}, source=source))
        except ConfigError:
            continue
        return n
    return 1


def _from_predict_epsilon(data: dict[str, Any], refuse: Callable[[str, str], SchedulerConfigError]) -> str:
    """The ``prediction_type`` of an old file's ``predict_epsilon`` (diffusers 0.7-0.11: True is
    epsilon, False sample), checked against the file's own ``prediction_type`` if it has one."""
    flag = data["predict_epsilon"]
    if not isinstance(flag, bool):
        raise refuse("predict_epsilon", "is not true or false")
    mapped = "epsilon" if flag else "sample"
    if data.get("prediction_type", mapped) != mapped:
        raise refuse("predict_epsilon", f"contradicts prediction_type={_shown(data['prediction_type'])} "
                                        f"(predict_epsilon={str(flag).lower()} means {mapped!r})")
    return mapped


def _check_timestep_type(data: dict[str, Any], prediction_type: Any,
                         refuse: Callable[[str, str], SchedulerConfigError]) -> None:
    """Refuse Euler's continuous timesteps where diffusers uses them (with v-prediction): the model
    then takes ``0.25 * log(sigma)`` for its timestep, not the integer t of the exported file."""
    if data.get("timestep_type") == "continuous" and prediction_type == "v_prediction":
        raise refuse("timestep_type", "with prediction_type='v_prediction' is not supported (the model takes "
                                      "0.25 * log(sigma) for its timestep, not the integer t the exported file gets)")


def _sampler_fields(cls: str, data: dict[str, Any],
                    refuse: Callable[[str, str], SchedulerConfigError]) -> dict[str, Any]:
    """The sampler (and its solver keys) of the classes this package runs; {} for the others."""
    if cls == "DDIMScheduler":
        return {"sampler": "ddim"}
    if cls == "DPMSolverMultistepScheduler":
        algorithm = data.get("algorithm_type", "dpmsolver++")
        if not _listed(algorithm, _DPM_SAMPLERS):
            raise refuse("algorithm_type", f"is not supported (choose one of: {', '.join(_DPM_SAMPLERS)})")
        sampler = {"sampler": _DPM_SAMPLERS[algorithm], "algorithm_type": algorithm}
    elif cls == "UniPCMultistepScheduler":
        sampler = {"sampler": "unipc"}
    else:
        return {}
    return {**sampler, **{k: data[k] for k in _SOLVER_KEYS if k in data}}
