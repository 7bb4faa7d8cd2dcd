"""Beta schedules and the DDPM variance: golden values and values computed by hand here."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ddpm_export.diffusion import DDPMScheduler, DiffusionConfig, Schedule
from ddpm_export.diffusion.schedule import cosine_betas, linear_betas, scaled_linear_betas

T = 1000


def _linear_beta(t: int, b0: float = 1e-4, b1: float = 0.02) -> float:
    return b0 + (b1 - b0) * t / (T - 1)


@pytest.mark.parametrize("t", [0, 1, 487, 999])
def test_linear_abar_by_hand(t: int) -> None:
    abar = math.prod(1.0 - _linear_beta(s) for s in range(t + 1))
    ours = Schedule.from_config(DiffusionConfig()).alphas_cumprod[t]
    assert ours == pytest.approx(abar, rel=1e-6)


def test_linear_abar_pinned() -> None:
    # prod_{t<T}(1 - beta_t) for the DDPM linear schedule, pinned to 5 digits
    assert Schedule.from_config(DiffusionConfig()).alphas_cumprod[-1] == pytest.approx(4.0358e-05, rel=1e-4)


def _cosine_f(s: float) -> float:
    return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2


@pytest.mark.parametrize("t", [0, 1, 500, 900, 990])
def test_cosine_abar_by_hand(t: int) -> None:
    # the betas telescope: abar_t = f((t + 1) / T) / f(0) while the 0.999 cap is not hit
    abar = _cosine_f((t + 1) / T) / _cosine_f(0.0)
    ours = Schedule.from_config(DiffusionConfig(beta_schedule="cosine")).alphas_cumprod[t]
    assert ours == pytest.approx(abar, rel=1e-6)


def test_cosine_cap() -> None:
    betas = cosine_betas(T)
    assert betas.max() == 0.999 and betas[-1] == 0.999
    assert np.all(np.diff(betas) > 0)


@pytest.mark.parametrize("t", [0, 321, 999])
def test_scaled_linear_beta_by_hand(t: int) -> None:
    b0, b1 = 0.00085, 0.012
    beta = (math.sqrt(b0) + (math.sqrt(b1) - math.sqrt(b0)) * t / (T - 1)) ** 2
    assert scaled_linear_betas(T, b0, b1)[t] == pytest.approx(beta, rel=1e-12)
    config = DiffusionConfig(beta_schedule="scaled_linear", beta_start=b0, beta_end=b1)
    assert Schedule.from_config(config).betas[t] == np.float32(beta)


def test_schedule_dtypes_and_consistency() -> None:
    s = Schedule.from_config(DiffusionConfig())
    assert s.num_train_timesteps == T
    for a in (s.betas, s.alphas, s.alphas_cumprod):
        assert a.dtype == np.float32 and a.shape == (T,) and not a.flags.writeable
    np.testing.assert_array_equal(s.betas, linear_betas(T, 1e-4, 0.02).astype(np.float32))
    np.testing.assert_allclose(s.alphas, 1.0 - s.betas.astype(np.float64), rtol=0, atol=6e-8)
    np.testing.assert_allclose(s.alphas_cumprod[1:] / s.alphas_cumprod[:-1], s.alphas[1:], rtol=2e-7)


def test_bad_betas_are_refused() -> None:
    with pytest.raises(ValueError, match="every value in \\(0, 1\\)"):
        Schedule.from_betas(np.array([0.1, 1.0]))


@pytest.mark.parametrize("t,variance", [(0, 0.0), (487, 0.00979), (999, 0.02)])
def test_ddpm_fixed_small_variance_golden(t: int, variance: float) -> None:
    # diffusers' tests/schedulers/test_scheduler_ddpm.py: |var - golden| < 1e-5
    scheduler = DDPMScheduler(DiffusionConfig(sampler="ddpm", num_inference_steps=T))
    assert abs(scheduler.variance(t) - variance) < 1e-5


def test_ddpm_variance_by_hand() -> None:
    abar = lambda t: math.prod(1.0 - _linear_beta(s) for s in range(t + 1))  # noqa: E731
    t = 487
    small = (1 - abar(t - 1)) / (1 - abar(t)) * _linear_beta(t)
    config = DiffusionConfig(sampler="ddpm", num_inference_steps=T)
    assert DDPMScheduler(config).variance(t) == pytest.approx(small, rel=1e-5)
    large = DDPMScheduler(config.replace(variance_type="fixed_large")).variance(t)
    assert large == pytest.approx(_linear_beta(t), rel=1e-5)
    assert DDPMScheduler(config).variance(0) == 1e-20  # clamped, as diffusers
