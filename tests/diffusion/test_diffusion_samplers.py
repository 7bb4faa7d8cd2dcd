"""Scheduler construction, timesteps and the step contract (shapes, noise, unknown t)."""

from __future__ import annotations

import numpy as np
import pytest

from ddpm_export.diffusion import (DDIMScheduler, DDPMScheduler, DiffusionConfig, make_scheduler,
                                   spaced_timesteps)

SHAPE = (1, 2, 3, 3)


def test_make_scheduler_follows_config_and_override() -> None:
    config = DiffusionConfig(num_inference_steps=25)
    ddim = make_scheduler(config)
    assert type(ddim) is DDIMScheduler and ddim.num_inference_steps == 25
    ddpm = make_scheduler(config, "ddpm")
    assert type(ddpm) is DDPMScheduler and ddpm.timesteps.tolist()[:3] == [960, 920, 880]
    assert type(make_scheduler(config.replace(sampler="ddpm"))) is DDPMScheduler
    with pytest.raises(ValueError, match="sampler='plms' is not valid; choose one of: 'ddim', 'ddpm'"):
        make_scheduler(config, "plms")  # type: ignore[arg-type]


def test_set_timesteps() -> None:
    s = DDIMScheduler(DiffusionConfig())
    assert s.timesteps.dtype == np.int64 and s.timesteps.tolist()[:3] == [980, 960, 940]
    assert s.timesteps[-1] == 0 and not s.timesteps.flags.writeable
    s.set_timesteps(4)
    assert s.timesteps.tolist() == [750, 500, 250, 0] and s.num_inference_steps == 4
    assert [s.previous_timestep(t) for t in s.timesteps] == [500, 250, 0, -1]
    with pytest.raises(ValueError, match=r"num_inference_steps must be an int in \[1, 1000\]"):
        s.set_timesteps(1001)


def test_spacings() -> None:
    assert spaced_timesteps(1000, 4, "leading", steps_offset=1).tolist() == [751, 501, 251, 1]
    # docs/conventions.md: t = i * (T // N), not (i * T) // N, when N does not divide T (diffusers' step_ratio)
    assert spaced_timesteps(1000, 30, "leading")[[0, 1, -1]].tolist() == [29 * 33, 28 * 33, 0]
    assert spaced_timesteps(1000, 4, "trailing").tolist() == [999, 749, 499, 249]
    assert spaced_timesteps(10, 10, "trailing").tolist() == list(range(9, -1, -1))
    assert spaced_timesteps(1000, 4, "linspace").tolist() == [999, 666, 333, 0]
    with pytest.raises(ValueError, match="timestep_spacing='uniform' is not valid"):
        spaced_timesteps(1000, 4, "uniform")  # type: ignore[arg-type]


def test_every_step_count_gives_n_distinct_timesteps() -> None:
    # diffusers' trailing spacing returns n + 1 timesteps, the last -1, for n = 61, 103, ...
    for spacing in ("leading", "trailing"):
        for n in range(1, 1001):
            ts = spaced_timesteps(1000, n, spacing)  # type: ignore[arg-type]
            assert len(ts) == n and len(set(ts.tolist())) == n and 0 <= ts.min() and ts.max() <= 999
            assert np.all(np.diff(ts) < 0)


def test_trailing_with_uneven_steps_steps_to_the_next_visited_timestep() -> None:
    # diffusers' DDIM would step 666 -> 666 - 1000 // 3 = 333 and then resume from 332
    s = DDIMScheduler(DiffusionConfig(timestep_spacing="trailing", num_inference_steps=3))
    assert s.timesteps.tolist() == [999, 666, 332]
    assert [s.previous_timestep(t) for t in s.timesteps] == [666, 332, -1]


def test_final_abar_prev() -> None:
    config = DiffusionConfig(num_inference_steps=10)
    abar0 = float(DDIMScheduler(config).schedule.alphas_cumprod[0])
    assert DDIMScheduler(config).abar_prev(0) == 1.0
    assert DDIMScheduler(config.replace(set_alpha_to_one=False)).abar_prev(0) == abar0
    assert DDPMScheduler(config.replace(set_alpha_to_one=False)).abar_prev(0) == 1.0  # DDPM: always 1


def test_last_step_predicts_x0() -> None:
    # at t = 0 with abar_prev = 1 both samplers return the (clipped) x0 prediction
    x = np.linspace(-2, 2, np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)
    eps = np.full(SHAPE, 0.3, np.float32)
    config = DiffusionConfig(num_inference_steps=10)
    abar0 = float(DDIMScheduler(config).schedule.alphas_cumprod[0])
    x0 = np.clip((x - np.sqrt(1 - abar0) * eps) / np.sqrt(abar0), -1, 1)
    np.testing.assert_allclose(DDIMScheduler(config).step(eps, 0, x), x0, rtol=1e-6)
    np.testing.assert_allclose(DDPMScheduler(config).step(eps, 0, x), x0, rtol=1e-6)


def test_eta_zero_is_deterministic_without_noise() -> None:
    s = DDIMScheduler(DiffusionConfig())
    x = np.ones(SHAPE, np.float32)
    assert not s.uses_noise(980)
    np.testing.assert_array_equal(s.step(x, 980, x), s.step(x, 980, x, np.ones(SHAPE, np.float32)))


def test_step_contract_errors() -> None:
    x = np.zeros(SHAPE, np.float32)
    ddpm = DDPMScheduler(DiffusionConfig(num_inference_steps=10))
    with pytest.raises(ValueError, match="DDPMScheduler.step at t=900 is stochastic and needs noise"):
        ddpm.step(x, 900, x)
    with pytest.raises(ValueError, match="DDIMScheduler.step at t=900 is stochastic and needs noise"):
        DDIMScheduler(DiffusionConfig(num_inference_steps=10, eta=0.5)).step(x, 900, x)
    with pytest.raises(ValueError, match="learned-variance outputs"):
        ddpm.step(np.zeros((1, 4, 3, 3), np.float32), 900, x, x)
    with pytest.raises(ValueError, match=r"noise has shape \(1, 2, 3\)"):
        ddpm.step(x, 900, x, x[..., 0])
    with pytest.raises(ValueError, match="t=901 is not one of the 10 timesteps this scheduler visits"):
        ddpm.step(x, 901, x, x)
