"""DiffusionConfig: the noise schedule and the sampler defaults as validated switches.

Defaults follow diffusers' ``DDPMScheduler`` / ``DDIMScheduler`` (linear betas 1e-4..0.02 over
T = 1000, epsilon prediction, ``fixed_small`` variance, x0 clipped to [-1, 1], ``leading``
timestep spacing). One config serves every sampler; each field says which sampler reads it.
The multistep solvers' fields carry diffusers' keyword names and defaults
(``DPMSolverMultistepScheduler`` / ``UniPCMultistepScheduler``).

Version 2 added the multistep solvers (their fields and sampler names, ``linspace`` spacing).
A version-1 file reads as version 2 with those fields at their defaults, which mean exactly what
version 1 meant (no version-1 sampler reads them).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Literal

from ddpm_export.configbase import ConfigError, FrozenConfig, check
from ddpm_export.diffusion.schedule import Schedule, make_betas
from ddpm_export.diffusion.timesteps import TimestepSpacing, solver_timesteps, spaced_timesteps
from ddpm_export.errors import BadInputError

BetaSchedule = Literal["linear", "scaled_linear", "cosine"]
PredictionType = Literal["epsilon", "sample", "v_prediction"]
VarianceType = Literal["fixed_small", "fixed_large"]
SamplerName = Literal["ddim", "ddpm", "dpm-solver++", "dpm-solver", "sde-dpm-solver++", "unipc"]
AlgorithmType = Literal["dpmsolver++", "dpmsolver", "sde-dpmsolver++"]
SolverType = Literal["midpoint", "heun", "bh1", "bh2"]
FinalSigmasType = Literal["zero", "sigma_min"]

#: What each DPM-Solver sampler name fixes. ``dpm-solver`` (noise prediction) cannot land on
#: sigma = 0 (lambda = +inf makes its update 0 * inf), so it ends at sigma_min, as diffusers requires.
SAMPLER_PRESETS: dict[str, dict[str, Any]] = {
    "dpm-solver++": {"algorithm_type": "dpmsolver++"},
    "dpm-solver": {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"},
    "sde-dpm-solver++": {"algorithm_type": "sde-dpmsolver++"},
}
#: The multistep solvers (``solver_timesteps`` spacing, sigma schedule) and their solver_type
#: choices, the default (``solver_type=None``) first: diffusers' midpoint and bh2.
DPM_SOLVER_TYPES = ("midpoint", "heun")
UNIPC_SOLVER_TYPES = ("bh2", "bh1")
SOLVER_TYPES: dict[str, tuple[str, ...]] = {
    "dpm-solver++": DPM_SOLVER_TYPES, "dpm-solver": DPM_SOLVER_TYPES, "sde-dpm-solver++": DPM_SOLVER_TYPES,
    "unipc": UNIPC_SOLVER_TYPES,
}

__all__ = [
    "AlgorithmType",
    "BetaSchedule",
    "ConfigError",
    "DPM_SOLVER_TYPES",
    "DiffusionConfig",
    "FinalSigmasType",
    "MAX_TRAIN_TIMESTEPS",
    "SAMPLER_PRESETS",
    "SOLVER_TYPES",
    "PredictionType",
    "SamplerName",
    "SolverType",
    "TimestepSpacing",
    "UNIPC_SOLVER_TYPES",
    "VarianceType",
]


#: the longest forward process a config may describe: the schedule is held as arrays of T values
#: (DDPM used 1000, improved DDPM 4000); a hand-edited 1e30 overflowed while they were built
MAX_TRAIN_TIMESTEPS = 100_000


@functools.lru_cache(maxsize=64)  # Pipeline.sample validates its config on every call, the same each time
def _abar_problem(config: "DiffusionConfig") -> str | None:
    """Why ``config``'s schedule cannot be sampled in float32, or None: a beta that rounds to 0 or
    1, or an ``abar_t`` that underflows to 0 (see :meth:`DiffusionConfig._validate_abar`)."""
    try:
        abar = Schedule.from_betas(make_betas(config)).alphas_cumprod
    except BadInputError as e:  # a beta that float32 rounds to 0 or 1 (1e-50, 1 - 1e-9)
        return (f"beta_start / beta_end: {e} once rounded to float32 (the precision the schedule is kept in), "
                f"got {config.beta_start}..{config.beta_end}")
    if abar[-1] != 0.0:
        return None
    first = int((abar > 0.0).sum())  # abar falls with t
    return (f"num_train_timesteps: abar_t = prod(1 - beta_s) underflows to 0 in float32 from t = {first} of "
            f"{config.num_train_timesteps} ({config.beta_schedule} betas {config.beta_start}..{config.beta_end}), "
            f"and the samplers divide by it; use fewer timesteps or smaller betas")


@dataclasses.dataclass(frozen=True)
class DiffusionConfig(FrozenConfig):
    """Forward-process schedule, model parameterisation and reverse-process sampler.

    ``beta_schedule="cosine"`` is diffusers' ``squaredcos_cap_v2`` (Nichol & Dhariwal 2021); it
    is defined by its ``abar(t)`` curve alone and does not read ``beta_start`` / ``beta_end``.
    """

    VERSION = 2

    version: int = 2
    # --- forward process (training) --------------------------------------------------------
    num_train_timesteps: int = 1000             # T; valid timesteps are 0 .. T-1
    beta_schedule: BetaSchedule = "linear"
    beta_start: float = 1e-4                    # beta_0 of linear / scaled_linear
    beta_end: float = 0.02                      # beta_{T-1} of linear / scaled_linear
    prediction_type: PredictionType = "epsilon"  # what the network outputs: eps, x0 or v
    # --- reverse process -------------------------------------------------------------------
    variance_type: VarianceType = "fixed_small"  # DDPM: beta~_t (Ho eq. 7) or beta_t
    clip_sample: bool = True                    # clip the predicted x0 (DDPM, DDIM; the solvers, as diffusers', do not)
    clip_sample_range: float = 1.0              # ... to [-range, range]
    timestep_spacing: TimestepSpacing = "leading"  # how N inference steps pick from 0 .. T-1
    steps_offset: int = 0                       # added to every leading-spaced timestep
    set_alpha_to_one: bool = True               # DDIM: abar before the last step is 1 (else abar_0)
    # --- multistep solvers: DPM-Solver(++) and UniPC, diffusers' keywords ------------------
    solver_order: int = 2                       # 1..3 (2 = DPM-Solver++ 2M, UniPC-2)
    algorithm_type: AlgorithmType = "dpmsolver++"  # DPM-Solver; fixed by the sampler name
    solver_type: SolverType | None = None       # DPM: midpoint|heun, UniPC: bh1|bh2; None: midpoint / bh2
    lower_order_final: bool = True              # lower orders at the end (DPM: with < 15 steps)
    use_karras_sigmas: bool = False             # Karras et al. 2022 sigmas (rho = 7) instead of the spacing
    final_sigmas_type: FinalSigmasType = "zero"  # the last step lands on sigma 0 or on sigma(t=0)
    predict_x0: bool = True                     # UniPC: data prediction (UniPC's "++"), else noise
    disable_corrector: tuple[int, ...] = ()     # UniPC: steps (0-based) whose corrector is skipped
    # --- sampler defaults used by the runtime ----------------------------------------------
    sampler: SamplerName = "ddim"
    num_inference_steps: int = 50               # N
    eta: float = 0.0                            # DDIM: 0 deterministic, 1 DDPM-like noise

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "config") -> "DiffusionConfig":
        """Also reads version 1 (see the module doc): it becomes version 2 with the solver defaults."""
        if isinstance(data, dict) and type(data.get("version")) is int and data["version"] == 1:
            data = {**data, "version": 2}
        return super().from_dict(data, source=source)

    @property
    def is_solver(self) -> bool:
        """Whether ``sampler`` is a multistep solver (DPM-Solver or UniPC)."""
        return self.sampler in SOLVER_TYPES

    def validate(self) -> None:
        T = self.num_train_timesteps
        check(2 <= T <= MAX_TRAIN_TIMESTEPS, "num_train_timesteps", f"must be in [2, {MAX_TRAIN_TIMESTEPS}], got {T}")
        if self.beta_schedule != "cosine":
            check(0.0 < self.beta_start < 1.0, "beta_start", f"must be in (0, 1), got {self.beta_start}")
            check(0.0 < self.beta_end < 1.0, "beta_end", f"must be in (0, 1), got {self.beta_end}")
            check(self.beta_start <= self.beta_end, "beta_end",
                  f"must be >= beta_start={self.beta_start}, got {self.beta_end}")
        self._validate_abar()
        check(self.clip_sample_range > 0.0, "clip_sample_range", f"must be > 0, got {self.clip_sample_range}")
        check(self.steps_offset >= 0, "steps_offset", f"must be >= 0, got {self.steps_offset}")
        check(self.steps_offset < T, "steps_offset", f"must be < num_train_timesteps={T}, got {self.steps_offset}")
        # diffusers silently ignores steps_offset with trailing spacing; we refuse it instead.
        check(self.steps_offset == 0 or self.timestep_spacing == "leading", "steps_offset",
              f"only applies to timestep_spacing='leading' (trailing spacing ends at T-1 by "
              f"construction); got steps_offset={self.steps_offset} with "
              f"timestep_spacing={self.timestep_spacing!r}, set it to 0")
        n = self.num_inference_steps
        check(1 <= n <= T, "num_inference_steps", f"must be in [1, num_train_timesteps={T}], got {n}")
        spacing = solver_timesteps if self.is_solver else spaced_timesteps
        try:
            spacing(T, n, self.timestep_spacing, self.steps_offset)
        except ValueError as e:  # the offset past T - 1, or (solvers, leading) n >= T
            field = "steps_offset" if self.steps_offset and "steps_offset" in str(e) else "num_inference_steps"
            raise ConfigError(f"{field}: {e}") from e
        check(0.0 <= self.eta <= 1.0, "eta", f"must be in [0, 1], got {self.eta}")
        self._validate_solver()

    def _validate_abar(self) -> None:
        """Every ``abar_t`` must be > 0 in float32: the samplers divide by it (DDIM, DDPM) and take
        the log of sigma (the solvers). Linear betas 1e-4..0.02 over T = 12000 underflow from t = 11103."""
        problem = _abar_problem(self)
        if problem is not None:
            raise ConfigError(problem)

    def _validate_solver(self) -> None:
        check(1 <= self.solver_order <= 3, "solver_order", f"must be 1, 2 or 3, got {self.solver_order}")
        check(all(i >= 0 for i in self.disable_corrector), "disable_corrector",
              f"must list step indices >= 0, got {list(self.disable_corrector)}")
        for key, value in SAMPLER_PRESETS.get(self.sampler, {}).items():
            check(getattr(self, key) == value, key,
                  f"sampler={self.sampler!r} needs {key}={value!r}, got {getattr(self, key)!r}")
        if self.is_solver and self.solver_type is not None:
            choices = SOLVER_TYPES[self.sampler]
            check(self.solver_type in choices, "solver_type",
                  f"{self.solver_type!r} is not a solver type of sampler={self.sampler!r}; choose one of: "
                  f"{', '.join(repr(c) for c in choices)} (or None for its default)")
        # diffusers' UniPC would return NaN: an order >= 2 predictor cannot land on sigma = 0 (lambda = inf).
        check(not (self.sampler == "unipc" and self.final_sigmas_type == "zero" and self.solver_order > 1
                   and not self.lower_order_final), "lower_order_final",
              "sampler='unipc' with final_sigmas_type='zero' and solver_order > 1 needs lower_order_final=True "
              "(a multistep update cannot land on sigma = 0)")
        # Karras sigmas end at sigma(t=0) already: a last step to sigma_min has length zero. diffusers
        # takes it as a no-op for its midpoint / bh2 solvers (NaN for heun); our solvers divide by the
        # step's length, so it is refused, naming what the nearest setting changes.
        check(not (self.sampler == "dpm-solver" and self.use_karras_sigmas), "use_karras_sigmas",
              "sampler='dpm-solver' ends on sigma_min (noise prediction cannot land on sigma = 0), where the Karras "
              "sigmas end already, so its last step would have length zero: with use_karras_sigmas=True choose "
              "dpm-solver++ or sde-dpm-solver++, or turn use_karras_sigmas off")
        check(not (self.use_karras_sigmas and self.final_sigmas_type == "sigma_min"), "final_sigmas_type",
              "use_karras_sigmas=True with final_sigmas_type='sigma_min' is not supported: the Karras sigmas end "
              "at sigma(t=0), so the last step would have length zero; final_sigmas_type='zero' is the nearest "
              "setting (its last step lands on the x0 prediction, where diffusers' no-op step stays at sigma(t=0))")
        # Noise prediction cannot land on sigma = 0 either (sigma_t (e^h - 1) is 0 * inf there).
        check(not (self.sampler == "unipc" and not self.predict_x0 and self.final_sigmas_type == "zero"),
              "final_sigmas_type", "sampler='unipc' with predict_x0=False needs final_sigmas_type='sigma_min' "
              "(noise prediction cannot land on sigma = 0)")
