"""Step for step against diffusers' DDPMScheduler and DDIMScheduler (the test oracle).

Same model output, same x_t, same noise; the error is the max-abs relative error
``max|ours - ref| / max|ref|`` of ``x_prev``. Every combination of schedule, prediction type,
variance type (DDPM), spacing, eta, set_alpha_to_one (DDIM) and clipping is covered, at the first
two, a middle and the last two visited timesteps. Two oracles per step:

- diffusers' own ``step`` code evaluated in float64 on our (float32) schedule: the same formulas,
  so the tolerance is 1e-6 (measured: < 1e-7).
- stock diffusers, in float32 on its own float32 schedule: 1e-3 (measured: 7e-4). Near t = 0,
  ``1 - abar_t`` and ``1 - abar_t / abar_prev`` are ~1e-4 while one float32 ulp of ``abar`` is
  6e-8, so an ulp of difference between the two float32 schedules (< 1e-6 relative, tested
  elementwise below) or float32 rounding in diffusers' step moves ``x_prev`` by up to 1e-3.
"""

from __future__ import annotations

import itertools
import zlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from ddpm_export.diffusion import (DDIMScheduler, DDPMScheduler, DiffusionConfig, Schedule,  # noqa: E402
                                   sample, spaced_timesteps)

TOL = 1e-6          # diffusers step code in float64, our schedule
TOL_STOCK = 1e-3    # stock diffusers in float32 (see the module doc)
SHAPE = (2, 3, 4, 4)
SCHEDULES = {"linear": "linear", "scaled_linear": "scaled_linear", "cosine": "squaredcos_cap_v2"}
PREDICTIONS = ["epsilon", "sample", "v_prediction"]


def _rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.max(np.abs(ours.astype(np.float64) - ref)) / np.max(np.abs(ref)))


def _case_rng(*case: object) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(case).encode()))


def _checked_steps(timesteps: np.ndarray) -> list[int]:
    n = len(timesteps)
    return sorted({0, 1, n // 2, n - 2, n - 1})


def _inputs(rng: np.random.Generator, prediction_type: str) -> tuple[np.ndarray, ...]:
    """x_t ~ N(0, 1); eps / v ~ N(0, 1); an x0 prediction partly outside [-1, 1]."""
    x_t = rng.standard_normal(SHAPE, dtype=np.float32)
    out = rng.standard_normal(SHAPE, dtype=np.float32)
    if prediction_type == "sample":
        out = (1.5 * out).astype(np.float32)
    noise = rng.standard_normal(SHAPE, dtype=np.float32)
    return x_t, out, noise


def _diffusers_kwargs(config: DiffusionConfig) -> dict:
    return dict(
        num_train_timesteps=config.num_train_timesteps,
        beta_schedule=SCHEDULES[config.beta_schedule],
        beta_start=config.beta_start,
        beta_end=config.beta_end,
        prediction_type=config.prediction_type,
        clip_sample=config.clip_sample,
        clip_sample_range=config.clip_sample_range,
        timestep_spacing=config.timestep_spacing,
        steps_offset=config.steps_offset,
    )


@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_schedule_matches_diffusers(schedule: str) -> None:
    config = DiffusionConfig(beta_schedule=schedule)
    ours = Schedule.from_config(config)
    ref = diffusers.DDPMScheduler(beta_schedule=SCHEDULES[schedule])
    assert ours.betas.dtype == ours.alphas_cumprod.dtype == np.float32
    assert _rel_err(ours.betas, ref.betas.numpy()) < TOL
    # elementwise: abar spans 1 .. 1e-9 (cosine), a scale-relative error would hide the tail
    abar_ref = ref.alphas_cumprod.numpy().astype(np.float64)
    assert np.max(np.abs(ours.alphas_cumprod - abar_ref) / abar_ref) < TOL


@pytest.mark.parametrize("spacing,n,offset", [
    ("leading", 50, 0), ("leading", 50, 1), ("leading", 7, 0), ("leading", 1000, 0),
    ("trailing", 50, 0), ("trailing", 7, 0), ("trailing", 1000, 0), ("trailing", 1, 0),
    ("linspace", 50, 0), ("linspace", 7, 0), ("linspace", 1000, 0), ("linspace", 1, 0),
])
def test_timesteps_match_diffusers(spacing: str, n: int, offset: int) -> None:
    config = DiffusionConfig(timestep_spacing=spacing, steps_offset=offset, num_inference_steps=n)
    for ours, ref in ((DDPMScheduler(config), diffusers.DDPMScheduler(**_diffusers_kwargs(config))),
                      (DDIMScheduler(config), diffusers.DDIMScheduler(**_diffusers_kwargs(config)))):
        ref.set_timesteps(n)
        assert ours.timesteps.dtype == np.int64
        np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy())


def test_timesteps_match_diffusers_for_every_step_count() -> None:
    leading = diffusers.DDIMScheduler(timestep_spacing="leading", steps_offset=1)
    trailing = diffusers.DDIMScheduler(timestep_spacing="trailing")
    for n in range(1, 1001):
        if n < 1000:  # offset 1 would push n = 1000 past t = 999
            leading.set_timesteps(n)
            np.testing.assert_array_equal(spaced_timesteps(1000, n, "leading", 1), leading.timesteps.numpy())
        trailing.set_timesteps(n)
        ref = trailing.timesteps.numpy()
        if len(ref) == n + 1:  # diffusers' extra timestep -1 (n = 61, 103, ...); we keep n
            assert ref[-1] == -1
            ref = ref[:n]
        np.testing.assert_array_equal(spaced_timesteps(1000, n, "trailing"), ref)


def _float64_ddpm(ours: DDPMScheduler):
    """diffusers' DDPMScheduler whose step runs in float64 on our schedule."""
    ref = diffusers.DDPMScheduler(variance_type=ours.config.variance_type, **_diffusers_kwargs(ours.config))
    ref.alphas_cumprod = torch.from_numpy(ours.schedule.alphas_cumprod.astype(np.float64))
    ref.one = torch.tensor(1.0, dtype=torch.float64)  # abar past the end
    return ref


def _float64_ddim(ours: DDIMScheduler):
    """diffusers' DDIMScheduler whose step runs in float64 on our schedule."""
    c = ours.config
    ref = diffusers.DDIMScheduler(set_alpha_to_one=c.set_alpha_to_one, **_diffusers_kwargs(c))
    ref.alphas_cumprod = torch.from_numpy(ours.schedule.alphas_cumprod.astype(np.float64))
    one = torch.tensor(1.0, dtype=torch.float64)
    ref.final_alpha_cumprod = one if c.set_alpha_to_one else ref.alphas_cumprod[0]  # abar past the end
    return ref


def _ddpm_ref(ref, out: np.ndarray, t: int, x_t: np.ndarray, dtype: torch.dtype, seed: int):
    """diffusers' DDPM step at ``dtype``, and the noise it drew (a twin generator redraws it)."""
    prev = ref.step(torch.from_numpy(out).to(dtype), t, torch.from_numpy(x_t).to(dtype),
                    generator=torch.Generator().manual_seed(seed)).prev_sample.numpy()
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed), dtype=dtype).numpy()
    return prev, noise.astype(np.float32)


DDPM_CASES = list(itertools.product(SCHEDULES, PREDICTIONS, ["fixed_small", "fixed_large"],
                                    [True, False], [1000, 10]))


@pytest.mark.parametrize("schedule,prediction,variance,clip,n", DDPM_CASES)
def test_ddpm_step_matches_diffusers(schedule: str, prediction: str, variance: str, clip: bool, n: int) -> None:
    config = DiffusionConfig(beta_schedule=schedule, prediction_type=prediction, variance_type=variance,
                             clip_sample=clip, sampler="ddpm", num_inference_steps=n)
    ours = DDPMScheduler(config)
    stock = diffusers.DDPMScheduler(variance_type=variance, **_diffusers_kwargs(config))
    exact = _float64_ddpm(ours)
    for ref in (stock, exact):
        ref.set_timesteps(n)
        np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy())
    rng = _case_rng(schedule, prediction, variance, clip, n)
    for i in _checked_steps(ours.timesteps):
        t = int(ours.timesteps[i])
        x_t, out, _ = _inputs(rng, prediction)
        for ref, dtype, tol in ((exact, torch.float64, TOL), (stock, torch.float32, TOL_STOCK)):
            expected, noise = _ddpm_ref(ref, out, t, x_t, dtype, seed=i)
            got = ours.step(out, t, x_t, noise)
            assert got.dtype == np.float32
            assert _rel_err(got, expected) < tol, f"{dtype} oracle, step {i} (t={t})"


DDIM_CASES = list(itertools.product(SCHEDULES, PREDICTIONS, ["leading", "trailing"], [0.0, 0.5, 1.0],
                                    [True, False], [True, False]))


@pytest.mark.parametrize("schedule,prediction,spacing,eta,clip,alpha_to_one", DDIM_CASES)
def test_ddim_step_matches_diffusers(schedule: str, prediction: str, spacing: str, eta: float, clip: bool,
                                     alpha_to_one: bool) -> None:
    offset = 1 if spacing == "leading" and not alpha_to_one else 0  # steps_offset is leading-only
    config = DiffusionConfig(beta_schedule=schedule, prediction_type=prediction, timestep_spacing=spacing,
                             eta=eta, clip_sample=clip, set_alpha_to_one=alpha_to_one, steps_offset=offset,
                             num_inference_steps=20)
    ours = DDIMScheduler(config)
    stock = diffusers.DDIMScheduler(set_alpha_to_one=alpha_to_one, **_diffusers_kwargs(config))
    exact = _float64_ddim(ours)
    for ref in (stock, exact):
        ref.set_timesteps(20)
        np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy())
    rng = _case_rng(schedule, prediction, spacing, eta, clip, alpha_to_one)
    for i in _checked_steps(ours.timesteps):
        t = int(ours.timesteps[i])
        x_t, out, noise = _inputs(rng, prediction)
        got = ours.step(out, t, x_t, noise)
        assert got.dtype == np.float32
        for ref, dtype, tol in ((exact, torch.float64, TOL), (stock, torch.float32, TOL_STOCK)):
            expected = ref.step(torch.from_numpy(out).to(dtype), t, torch.from_numpy(x_t).to(dtype), eta=eta,
                                variance_noise=torch.from_numpy(noise).to(dtype)).prev_sample.numpy()
            assert _rel_err(got, expected) < tol, f"{dtype} oracle, step {i} (t={t})"


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_loop_matches_diffusers(eta: float) -> None:
    """50 DDIM steps through our loop vs stock diffusers fed the same PCG64 noise, in order."""
    shape = (2, 3, 8, 8)

    def model(x_t: np.ndarray, t: np.ndarray, cond: np.ndarray | None) -> np.ndarray:
        return np.float32(0.1) * x_t

    ours = sample(model, DDIMScheduler(DiffusionConfig(eta=eta)), shape, seed=0)

    ref = diffusers.DDIMScheduler()
    ref.set_timesteps(50)
    rng = np.random.Generator(np.random.PCG64(0))
    x = torch.from_numpy(rng.standard_normal(shape, dtype=np.float32))
    for t in ref.timesteps:
        z = torch.from_numpy(rng.standard_normal(shape, dtype=np.float32))
        x = ref.step(0.1 * x, t, x, eta=eta, variance_noise=z).prev_sample
    np.testing.assert_allclose(ours, x.clamp(-1, 1).numpy(), rtol=0, atol=1e-5)
