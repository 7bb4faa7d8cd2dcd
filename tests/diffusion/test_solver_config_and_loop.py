"""The multistep solvers' config fields, their validation, the registry names, and how the loop
and a scheduler's history interact (reset, step order, the SDE variant's noise)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ddpm_export.configbase import ConfigError
from ddpm_export.errors import BadInputError
from ddpm_export.diffusion import (SCHEDULERS, DiffusionConfig, DPMSolverMultistepScheduler, UniPCMultistepScheduler,
                                   make_scheduler, sample, sampler_config, sampler_defaults, solver_timesteps)

SHAPE = (2, 1, 4, 4)


def _model(x: np.ndarray, t: np.ndarray, cond: np.ndarray | None) -> np.ndarray:
    return (0.3 * np.tanh(x) + 1e-4 * t.astype(np.float32)[:, None, None, None]).astype(np.float32)


def test_version_1_files_still_load_as_version_2() -> None:
    v1 = {"version": 1, "beta_schedule": "cosine", "sampler": "ddpm", "num_inference_steps": 20, "eta": 0.0}
    c = DiffusionConfig.from_dict(v1)
    assert c.version == 2 and c == DiffusionConfig(beta_schedule="cosine", sampler="ddpm", num_inference_steps=20)
    assert json.loads(c.to_json())["version"] == 2
    with pytest.raises(ConfigError, match="version=3 is not supported"):
        DiffusionConfig.from_dict({"version": 3})


def test_solver_fields_use_diffusers_names_and_defaults() -> None:
    c = DiffusionConfig()
    assert (c.solver_order, c.algorithm_type, c.solver_type, c.lower_order_final, c.use_karras_sigmas,
            c.final_sigmas_type, c.predict_x0, c.disable_corrector) == (
        2, "dpmsolver++", None, True, False, "zero", True, ())
    assert DiffusionConfig.from_json(sampler_config(c, "unipc").replace(disable_corrector=(1, 2)).to_json()) \
        == sampler_config(c, "unipc").replace(disable_corrector=(1, 2))


@pytest.mark.parametrize("kwargs,message", [
    (dict(solver_order=4), "solver_order: must be 1, 2 or 3, got 4"),
    (dict(sampler="dpm-solver++", algorithm_type="dpmsolver"),
     "algorithm_type: sampler='dpm-solver++' needs algorithm_type='dpmsolver++', got 'dpmsolver'"),
    (dict(sampler="dpm-solver", algorithm_type="dpmsolver"),
     "final_sigmas_type: sampler='dpm-solver' needs final_sigmas_type='sigma_min', got 'zero'"),
    (dict(sampler="unipc", solver_type="midpoint"),
     "solver_type: 'midpoint' is not a solver type of sampler='unipc'; choose one of: 'bh2', 'bh1'"),
    (dict(sampler="dpm-solver++", solver_type="bh2"), "choose one of: 'midpoint', 'heun'"),
    (dict(solver_type="rk4"), "solver_type='rk4' has the wrong type"),
    (dict(use_karras_sigmas=True, final_sigmas_type="sigma_min"),
     "use_karras_sigmas=True with final_sigmas_type='sigma_min' is not supported: the Karras sigmas end at sigma(t=0)"),
    (dict(sampler="unipc", predict_x0=False), "sampler='unipc' with predict_x0=False needs final_sigmas_type"),
    (dict(sampler="unipc", lower_order_final=False), "needs lower_order_final=True"),
    (dict(disable_corrector=(-1,)), "disable_corrector: must list step indices >= 0"),
    (dict(sampler="unipc", num_inference_steps=1000), "leading spacing of a multistep solver needs"),
])
def test_invalid_solver_configs_name_the_field(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        DiffusionConfig(**kwargs)
    assert message in str(info.value)


@pytest.mark.parametrize("sampler, kwargs, where, advice, fits", [
    ("dpm-solver++", dict(timestep_spacing="linspace"), "steps 499 and 500",
     "use at most 999 steps, or timestep_spacing='leading' or", 999),
    ("unipc", dict(timestep_spacing="linspace"), "steps 499 and 500", "use at most 999 steps, or", 999),
    ("dpm-solver++", dict(timestep_spacing="trailing", final_sigmas_type="sigma_min"), "steps 999 and 1000",
     "use final_sigmas_type='zero', or at most 666 steps", 666),  # trailing ends at t = round(T / n) - 1
    ("dpm-solver", dict(timestep_spacing="trailing"), "steps 999 and 1000", "use at most 666 steps", 666),
])
def test_a_solver_step_of_zero_length_is_refused_before_sampling(sampler, kwargs, where, advice, fits) -> None:
    """Two equal sigmas in a row (h = 0) ended in ZeroDivisionError mid-run (diffusers: NaN)."""
    with pytest.raises(ConfigError) as info:
        make_scheduler(DiffusionConfig(**kwargs), sampler, num_inference_steps=1000)
    assert f"solver {where} have the same sigma" in str(info.value) and advice in str(info.value), str(info.value)
    assert (np.diff(make_scheduler(DiffusionConfig(**kwargs), sampler, num_inference_steps=fits).sigmas) < 0).all()
    with pytest.raises(ConfigError, match="the same sigma"):
        make_scheduler(DiffusionConfig(**kwargs), sampler, num_inference_steps=fits + 1)


def test_registry_names_and_their_presets() -> None:
    assert list(SCHEDULERS) == ["ddim", "ddpm", "dpm-solver++", "dpm-solver", "sde-dpm-solver++", "unipc"]
    base = DiffusionConfig(num_inference_steps=10)
    for name, cls, algorithm, final in (("dpm-solver++", DPMSolverMultistepScheduler, "dpmsolver++", "zero"),
                                        ("dpm-solver", DPMSolverMultistepScheduler, "dpmsolver", "sigma_min"),
                                        ("sde-dpm-solver++", DPMSolverMultistepScheduler, "sde-dpmsolver++", "zero"),
                                        ("unipc", UniPCMultistepScheduler, "dpmsolver++", "zero")):
        s = make_scheduler(base, name)
        assert type(s) is cls and s.config.sampler == name
        assert (s.config.algorithm_type, s.config.final_sigmas_type) == (algorithm, final)
    assert make_scheduler(base, "unipc").solver_type == "bh2"
    assert make_scheduler(base, "dpm-solver++").solver_type == "midpoint"
    with pytest.raises(ValueError, match="sampler='plms' is not valid; choose one of: 'ddim', 'ddpm', 'dpm-solver"):
        make_scheduler(base, "plms")  # type: ignore[arg-type]


def test_sampler_defaults_list_the_fields_the_sampler_reads() -> None:
    assert sampler_defaults(DiffusionConfig()) == {"sampler": "ddim", "num_inference_steps": 50, "eta": 0.0}
    d = sampler_defaults(sampler_config(DiffusionConfig(num_inference_steps=10, solver_order=3), "dpm-solver++"))
    assert d == {"sampler": "dpm-solver++", "num_inference_steps": 10, "eta": 0.0, "algorithm_type": "dpmsolver++",
                 "solver_order": 3, "solver_type": None, "lower_order_final": True, "use_karras_sigmas": False,
                 "final_sigmas_type": "zero"}


def test_solver_sigmas_by_hand() -> None:
    # leading over n + 1 intervals: T // 11 = 90; sigma = sqrt((1 - abar) / abar) there, then 0
    s = make_scheduler(DiffusionConfig(num_inference_steps=10), "dpm-solver++")
    np.testing.assert_array_equal(s.timesteps, np.arange(900, 0, -90))
    abar = s.schedule.alphas_cumprod.astype(np.float64)
    np.testing.assert_allclose(s.sigmas[:-1], np.sqrt((1 - abar[s.timesteps]) / abar[s.timesteps]), rtol=1e-15)
    assert s.sigmas[-1] == 0.0 and s.abar_prev(90) == 1.0 and s.previous_timestep(90) == -1
    assert solver_timesteps(1000, 10, "linspace").tolist() == [999, 899, 799, 699, 599, 500, 400, 300, 200, 100]
    assert solver_timesteps(1000, 10, "trailing").tolist() == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    k = make_scheduler(DiffusionConfig(num_inference_steps=5, use_karras_sigmas=True), "unipc")
    lo, hi = np.sqrt((1 - abar[0]) / abar[0]), np.sqrt((1 - abar[-1]) / abar[-1])
    ramp = np.linspace(0, 1, 5)
    np.testing.assert_allclose(k.sigmas[:-1], (hi ** (1 / 7) + ramp * (lo ** (1 / 7) - hi ** (1 / 7))) ** 7, rtol=1e-12)
    assert k.timesteps[0] == 999 and k.timesteps[-1] == 0


def test_first_order_dpm_solver_plus_plus_is_ddim() -> None:
    """DPM-Solver++-1 is DDIM (Lu et al. 2022b, section 4.1) on the same timesteps and final abar."""
    config = DiffusionConfig(num_inference_steps=10, solver_order=1, clip_sample=False, timestep_spacing="trailing")
    x_T = np.random.default_rng(0).standard_normal(SHAPE, dtype=np.float32)
    dpm = make_scheduler(config, "dpm-solver++")
    ddim = make_scheduler(config.replace(num_inference_steps=10), "ddim")
    np.testing.assert_array_equal(dpm.timesteps, ddim.timesteps)
    got = sample(_model, dpm, SHAPE, seed=0, x_T=x_T)
    want = sample(_model, ddim, SHAPE, seed=0, x_T=x_T)
    np.testing.assert_allclose(got, want, atol=2e-6)


@pytest.mark.parametrize("name", ["dpm-solver++", "sde-dpm-solver++", "unipc"])
def test_the_loop_resets_the_history_so_a_scheduler_can_be_reused(name: str) -> None:
    s = make_scheduler(DiffusionConfig(num_inference_steps=6), name)
    first = sample(_model, s, SHAPE, seed=1)
    assert s.step_index == 6
    np.testing.assert_array_equal(sample(_model, s, SHAPE, seed=1), first)
    np.testing.assert_array_equal(sample(_model, make_scheduler(DiffusionConfig(num_inference_steps=6), name),
                                         SHAPE, seed=1), first)


def test_steps_must_follow_the_timesteps_in_order() -> None:
    s = make_scheduler(DiffusionConfig(num_inference_steps=4), "unipc")
    x = np.zeros(SHAPE, np.float32)
    assert s.timesteps.tolist() == [800, 600, 400, 200]  # leading over 5 intervals, as diffusers
    # BadInputError, as DDPM's and DDIM's for the same misuse (a plain ValueError is no DdpmExportError)
    with pytest.raises(BadInputError, match=r"step 0 expects t=800, got t=600 \(reset\(\) starts over\)"):
        s.step(x, 600, x)
    with pytest.raises(BadInputError, match=r"t=700 is not one of the 4 timesteps this scheduler visits"):
        s.previous_timestep(700)
    for t in s.timesteps:
        s.step(x, int(t), x)
    with pytest.raises(BadInputError, match="expects none \\(all steps taken\\)"):
        s.step(x, 200, x)
    s.set_timesteps(4)
    s.step(x, 800, x)  # set_timesteps clears the history too


def test_sde_variant_draws_the_loops_noise_and_the_ode_solvers_do_not() -> None:
    x_T = np.random.default_rng(0).standard_normal(SHAPE, dtype=np.float32)
    config = DiffusionConfig(num_inference_steps=8)
    for name in ("dpm-solver++", "unipc"):
        a = sample(_model, make_scheduler(config, name), SHAPE, seed=0, x_T=x_T)
        np.testing.assert_array_equal(a, sample(_model, make_scheduler(config, name), SHAPE, seed=5, x_T=x_T))
    sde = make_scheduler(config, "sde-dpm-solver++")
    assert sde.uses_noise(int(sde.timesteps[0]))
    a = sample(_model, sde, SHAPE, seed=0, x_T=x_T)
    assert not np.array_equal(a, sample(_model, sde, SHAPE, seed=5, x_T=x_T))
    with pytest.raises(ValueError, match="is stochastic and needs noise"):
        sde.reset()
        sde.step(x_T, int(sde.timesteps[0]), x_T)
