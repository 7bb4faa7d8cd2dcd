"""DiffusionConfig: defaults, JSON round trip, and the messages of invalid configs."""

from __future__ import annotations

import json

import pytest

from ddpm_export.configbase import ConfigError
from ddpm_export.diffusion import DiffusionConfig


def test_defaults_follow_diffusers() -> None:
    c = DiffusionConfig()
    assert (c.version, c.num_train_timesteps, c.beta_schedule, c.beta_start, c.beta_end) == (
        2, 1000, "linear", 1e-4, 0.02)
    assert (c.prediction_type, c.variance_type, c.clip_sample, c.clip_sample_range) == (
        "epsilon", "fixed_small", True, 1.0)
    assert (c.timestep_spacing, c.steps_offset, c.set_alpha_to_one) == ("leading", 0, True)
    assert (c.sampler, c.num_inference_steps, c.eta) == ("ddim", 50, 0.0)


@pytest.mark.parametrize("config", [
    DiffusionConfig(),
    DiffusionConfig(beta_schedule="cosine", prediction_type="v_prediction", variance_type="fixed_large",
                    clip_sample=False, timestep_spacing="trailing", set_alpha_to_one=False, sampler="ddpm",
                    num_inference_steps=1000, eta=0.5),
    DiffusionConfig(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1,
                    prediction_type="sample", clip_sample_range=2.5),
])
def test_json_round_trip(config: DiffusionConfig) -> None:
    text = config.to_json()
    assert DiffusionConfig.from_json(text) == config
    assert json.loads(text)["version"] == 2
    assert DiffusionConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("kwargs,message", [
    (dict(beta_schedule="quadratic"),
     "beta_schedule='quadratic' is not valid; choose one of: 'linear', 'scaled_linear', 'cosine'"),
    (dict(prediction_type="eps"),
     "prediction_type='eps' is not valid; choose one of: 'epsilon', 'sample', 'v_prediction'"),
    (dict(variance_type="learned"), "choose one of: 'fixed_small', 'fixed_large'"),
    (dict(timestep_spacing="uniform"), "choose one of: 'leading', 'trailing', 'linspace'"),
    (dict(sampler="euler"), "sampler='euler' is not valid; choose one of: 'ddim', 'ddpm', 'dpm-solver++', "
                            "'dpm-solver', 'sde-dpm-solver++', 'unipc'"),
    (dict(num_inference_steps=50.0), "num_inference_steps=50.0 has the wrong type; expected int"),
    (dict(version=3), "version: 3 is not supported"),
    (dict(num_train_timesteps=1), "num_train_timesteps: must be in [2, 100000], got 1"),
    (dict(num_train_timesteps=10**30), f"num_train_timesteps: must be in [2, 100000], got {10**30}"),  # overflowed
    (dict(beta_start=0.0), "beta_start: must be in (0, 1), got 0.0"),
    (dict(beta_start=0.03), "beta_end: must be >= beta_start=0.03, got 0.02"),
    (dict(clip_sample_range=0.0), "clip_sample_range: must be > 0"),
    (dict(num_inference_steps=0), "num_inference_steps: must be in [1, num_train_timesteps=1000], got 0"),
    (dict(num_inference_steps=1001), "num_inference_steps: must be in [1, num_train_timesteps=1000], got 1001"),
    (dict(eta=1.5), "eta: must be in [0, 1], got 1.5"),
    (dict(steps_offset=-1), "steps_offset: must be >= 0, got -1"),
    (dict(steps_offset=1, timestep_spacing="trailing"), "steps_offset: only applies to timestep_spacing='leading'"),
    (dict(steps_offset=1, num_inference_steps=1000), "past the last trained timestep 999"),
])
def test_invalid_configs_name_the_field(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        DiffusionConfig(**kwargs)
    assert message in str(info.value)


def test_cosine_does_not_read_beta_range() -> None:
    # squaredcos_cap_v2 is defined by abar(t) alone; beta_start / beta_end are not checked for it
    assert DiffusionConfig(beta_schedule="cosine", beta_start=0.5, beta_end=0.1).beta_schedule == "cosine"


def test_unknown_field_and_bad_json_are_refused() -> None:
    with pytest.raises(ConfigError, match="unknown field\\(s\\) 'betas'"):
        DiffusionConfig.from_dict({"betas": [0.1]})
    with pytest.raises(ConfigError, match="not valid JSON"):
        DiffusionConfig.from_json("{")


def test_a_schedule_whose_abar_underflows_in_float32_is_refused_where_it_starts() -> None:
    """Linear betas 1e-4..0.02 over T = 12000 passed validation, then every sampler that reached
    t = T - 1 failed (DDIM ZeroDivisionError, UniPC / DPM-Solver math domain error). The first
    t is found here from float64 logs: abar rounds to float32 0 below half the smallest subnormal."""
    import math

    import numpy as np

    T = 12000
    betas = np.linspace(1e-4, 0.02, T, dtype=np.float64).astype(np.float32).astype(np.float64)
    log_abar = np.cumsum(np.log1p(-betas))
    first = int(np.argmax(log_abar < math.log(2.0 ** -150)))
    with pytest.raises(ConfigError, match=rf"num_train_timesteps: abar_t = prod\(1 - beta_s\) underflows to 0 in "
                                          rf"float32 from t = {first} of {T} \(linear betas 0.0001..0.02\)"):
        DiffusionConfig(num_train_timesteps=T)
    DiffusionConfig(num_train_timesteps=10000)  # abar_T 1.1e-44, a subnormal: every sampler runs


@pytest.mark.parametrize("version", [True, 1.0, "1", 0, None])
def test_a_malformed_version_is_refused_as_malformed_not_as_too_new(version) -> None:
    """`version: true` and `1.0` were read as version 1 (then 2); `"1"`, 0 and null said "upgrade
    ddpm-export", which reads none of them."""
    with pytest.raises(ConfigError, match=r"is not a DiffusionConfig version: it must be an integer 1..2") as info:
        DiffusionConfig.from_dict({"version": version})
    assert "upgrade" not in str(info.value)


def test_switching_solver_family_drops_the_other_family_s_solver_type() -> None:
    """A UniPC file with solver_type 'bh1' refused every DPM-Solver sampler ('bh1' is not a solver
    type of dpm-solver++), and no option could clear it; the same family keeps it."""
    from ddpm_export.diffusion.samplers import sampler_config

    unipc = DiffusionConfig(sampler="unipc", solver_type="bh1", timestep_spacing="linspace")
    assert sampler_config(unipc, "dpm-solver++").solver_type is None  # its default, midpoint
    assert sampler_config(unipc, "unipc").solver_type == "bh1"
    dpm = DiffusionConfig(sampler="dpm-solver++", solver_type="heun", timestep_spacing="linspace")
    assert sampler_config(dpm, "sde-dpm-solver++").solver_type == "heun"
    assert sampler_config(dpm, "unipc").solver_type is None
    assert sampler_config(dpm, "unipc", solver_type="bh1").solver_type == "bh1"  # asked for: kept


def test_dpm_solver_with_karras_sigmas_names_the_samplers_that_take_them() -> None:
    """dpm-solver's preset ends on sigma_min; the message suggested final_sigmas_type='zero', which
    that sampler refuses."""
    from ddpm_export.diffusion.samplers import sampler_config

    with pytest.raises(ConfigError, match=r"use_karras_sigmas: sampler='dpm-solver' .* choose dpm-solver\+\+ or "
                                          r"sde-dpm-solver\+\+, or turn use_karras_sigmas off"):
        sampler_config(DiffusionConfig(use_karras_sigmas=True, timestep_spacing="linspace"), "dpm-solver")
