"""DPM-Solver(++) and UniPC against diffusers' schedulers (the test oracle), step by step and
over whole sampling runs.

The oracle is diffusers' own ``set_timesteps`` and ``step`` code evaluated in float64 on our
float32 schedule: its module's ``torch.float32`` / ``numpy.float32`` are mapped to float64 while
it runs (diffusers casts the sample and the sigmas to float32 in place), so both sides do the same
arithmetic in float64 and the error is the final rounding to float32 (tolerance 1e-6 relative,
``max|ours - ref| / max|ref|``; measured < 1e-7).

Step by step, both get the same random ``x_t``, model output and noise at every step, so the
multistep history (and UniPC's corrector input) is exercised with unrelated values. Whole runs go
through :func:`ddpm_export.diffusion.sample` (PCG64 noise, float32 between steps, guidance) and
drive diffusers with the same draws in the same order.
"""

from __future__ import annotations

import contextlib
import itertools
import zlib
from typing import Any, Iterator

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from diffusers.schedulers import scheduling_dpmsolver_multistep as dpm_module  # noqa: E402
from diffusers.schedulers import scheduling_unipc_multistep as unipc_module  # noqa: E402

from ddpm_export.diffusion import (DiffusionConfig, DPMSolverMultistepScheduler, UniPCMultistepScheduler,  # noqa: E402
                                   make_scheduler, sample, sampler_config, solver_timesteps)

TOL = 1e-6
SHAPE = (2, 3, 4, 4)
SCHEDULES = {"linear": "linear", "cosine": "squaredcos_cap_v2", "scaled_linear": "scaled_linear"}
PREDICTIONS = ["epsilon", "sample", "v_prediction"]
ALGORITHMS = {"dpmsolver++": "dpm-solver++", "dpmsolver": "dpm-solver", "sde-dpmsolver++": "sde-dpm-solver++"}


class _Float64Alias:
    """A module whose ``float32`` is its ``float64`` (everything else delegates)."""

    def __init__(self, module: Any) -> None:
        self._module = module
        self.float32 = module.float64

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


@contextlib.contextmanager
def _float64(module: Any) -> Iterator[None]:
    saved = module.torch, module.np
    module.torch, module.np = _Float64Alias(torch), _Float64Alias(np)
    try:
        yield
    finally:
        module.torch, module.np = saved


def _cfg(sampler: str, **fields: Any) -> DiffusionConfig:
    """A config for ``sampler`` with the fields its name fixes (algorithm_type, ...)."""
    return sampler_config(DiffusionConfig(**fields), sampler)


def _rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.max(np.abs(ours.astype(np.float64) - ref)) / np.max(np.abs(ref)))


def _oracle(ours: DPMSolverMultistepScheduler | UniPCMultistepScheduler):
    """diffusers' scheduler with our config and our schedule (float64), set to our step count."""
    c = ours.config
    kwargs = dict(num_train_timesteps=c.num_train_timesteps, beta_schedule=SCHEDULES[c.beta_schedule],
                  beta_start=c.beta_start, beta_end=c.beta_end, prediction_type=c.prediction_type,
                  solver_order=c.solver_order, solver_type=ours.solver_type, lower_order_final=c.lower_order_final,
                  use_karras_sigmas=c.use_karras_sigmas, final_sigmas_type=c.final_sigmas_type,
                  timestep_spacing=c.timestep_spacing, steps_offset=c.steps_offset)
    if isinstance(ours, DPMSolverMultistepScheduler):
        module, ref = dpm_module, diffusers.DPMSolverMultistepScheduler(algorithm_type=c.algorithm_type, **kwargs)
    else:
        module, ref = unipc_module, diffusers.UniPCMultistepScheduler(
            predict_x0=c.predict_x0, disable_corrector=list(c.disable_corrector), **kwargs)
    ref.alphas_cumprod = torch.from_numpy(ours.schedule.alphas_cumprod.astype(np.float64))
    with _float64(module):
        ref.set_timesteps(ours.num_inference_steps)
    # Start counting at step 0, as diffusers' pipelines do: without it diffusers finds the first step
    # by its timestep and, when that timestep repeats (Karras sigmas on cosine: 999, 999, ...), takes
    # the second occurrence and skips a sigma.
    ref.set_begin_index(0)
    assert ref.sigmas.dtype == torch.float64
    np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy())
    np.testing.assert_allclose(ours.sigmas, ref.sigmas.numpy(), rtol=1e-12, atol=0)
    return module, ref


def _ref_step(module: Any, ref: Any, out: np.ndarray, t: int, x: np.ndarray, noise: np.ndarray) -> np.ndarray:
    kwargs = {"variance_noise": torch.from_numpy(noise).double()} if module is dpm_module else {}
    with _float64(module):
        prev = ref.step(torch.from_numpy(out).double(), t, torch.from_numpy(x).double(), **kwargs).prev_sample
    assert prev.dtype == torch.float64
    return prev.numpy()


def _check_steps(config: DiffusionConfig, *, skip_last: bool = False) -> None:
    ours = make_scheduler(config)
    module, ref = _oracle(ours)
    rng = np.random.default_rng(zlib.crc32(repr(config).encode()))
    n = len(ours.timesteps)
    for i, t in enumerate(ours.timesteps):
        x_t, out, noise = (rng.standard_normal(SHAPE, dtype=np.float32) for _ in range(3))
        got = ours.step(out, int(t), x_t, noise)
        expected = _ref_step(module, ref, out, int(t), x_t, noise)
        assert got.dtype == np.float32
        if skip_last and i == n - 1:
            continue
        assert _rel_err(got, expected) < TOL, f"step {i} of {n} (t={int(t)})"


DPM_CASES = list(itertools.product(ALGORITHMS, [1, 2, 3], ["midpoint", "heun"]))


@pytest.mark.parametrize("algorithm,order,solver_type", DPM_CASES)
def test_dpm_solver_steps_match_diffusers(algorithm: str, order: int, solver_type: str) -> None:
    """Every algorithm, order and solver type; each prediction type on linear and cosine."""
    for k, (prediction, schedule) in enumerate(itertools.product(PREDICTIONS, ["linear", "cosine"])):
        n = 8 if k % 2 else 20  # below / above lower_order_final's 15-step threshold
        _check_steps(_cfg(ALGORITHMS[algorithm], solver_order=order,
                                     solver_type=solver_type, prediction_type=prediction, beta_schedule=schedule,
                                     num_inference_steps=n, final_sigmas_type="sigma_min" if algorithm == "dpmsolver"
                                     else ("zero", "sigma_min")[k % 2]))


UNIPC_CASES = list(itertools.product([1, 2, 3], ["bh1", "bh2"], [True, False]))


@pytest.mark.parametrize("order,solver_type,predict_x0", UNIPC_CASES)
def test_unipc_steps_match_diffusers(order: int, solver_type: str, predict_x0: bool) -> None:
    """Every order, B(h) and parameterisation; each prediction type on linear and cosine."""
    for k, (prediction, schedule) in enumerate(itertools.product(PREDICTIONS, ["linear", "cosine"])):
        final = ("zero", "sigma_min")[k % 2] if predict_x0 else "sigma_min"  # eps cannot land on sigma 0
        config = _cfg("unipc", solver_order=order, solver_type=solver_type, predict_x0=predict_x0,
                                 prediction_type=prediction, beta_schedule=schedule, num_inference_steps=(7, 12)[k % 2],
                                 final_sigmas_type=final)
        # diffusers' bh1 returns NaN on its last step to sigma = 0 (see unipc.py); checked separately below
        _check_steps(config, skip_last=solver_type == "bh1" and final == "zero")


@pytest.mark.parametrize("sampler,schedule", list(itertools.product(["dpm-solver++", "sde-dpm-solver++", "unipc"],
                                                                     ["linear", "cosine", "scaled_linear"])))
def test_karras_sigmas_match_diffusers(sampler: str, schedule: str) -> None:
    """Karras sigmas: the timesteps the network sees (DPM truncates cosine's, UniPC rounds) and the steps."""
    for n in (10, 25):
        _check_steps(_cfg(sampler, beta_schedule=schedule, use_karras_sigmas=True,
                                     solver_order=3 if n == 25 else 2, num_inference_steps=n))


@pytest.mark.parametrize("sampler", ["dpm-solver++", "dpm-solver", "unipc"])
@pytest.mark.parametrize("spacing,offset", [("leading", 0), ("leading", 1), ("trailing", 0), ("linspace", 0)])
def test_spacings_and_lower_order_final_match_diffusers(sampler: str, spacing: str, offset: int) -> None:
    for n, lower in ((5, True), (5, False), (16, True), (1, True), (2, True)):
        if sampler == "unipc" and not lower:
            continue  # refused with final sigma 0 (NaN in diffusers); sigma_min below
        _check_steps(_cfg(sampler, timestep_spacing=spacing, steps_offset=offset, solver_order=3,
                          lower_order_final=lower, num_inference_steps=n))
    _check_steps(_cfg(sampler, timestep_spacing=spacing, steps_offset=offset, solver_order=3,
                      lower_order_final=False, num_inference_steps=6, final_sigmas_type="sigma_min"))


def test_unipc_disable_corrector_matches_diffusers() -> None:
    _check_steps(_cfg("unipc", solver_order=3, disable_corrector=(0, 2, 3), num_inference_steps=8))


def test_unipc_bh1_lands_on_the_x0_prediction_where_diffusers_returns_nan() -> None:
    config = _cfg("unipc", solver_type="bh1", num_inference_steps=4)
    ours = make_scheduler(config)
    rng = np.random.default_rng(0)
    for t in ours.timesteps:
        x_t, eps = rng.standard_normal(SHAPE, dtype=np.float32), rng.standard_normal(SHAPE, dtype=np.float32)
        got = ours.step(eps, int(t), x_t)
    # the x0 prediction (x_t - sigma_t eps) / alpha_t at the last visited sigma (of the uncorrected input)
    alpha = 1.0 / np.sqrt(ours.sigmas[3] ** 2 + 1.0)
    assert np.all(np.isfinite(got))
    x0 = (x_t - ours.sigmas[3] * alpha * eps) / alpha
    np.testing.assert_allclose(got, x0.astype(np.float32), rtol=1e-6, atol=1e-6)


def test_solver_timesteps_match_diffusers_for_every_step_count() -> None:
    for spacing in ("leading", "trailing", "linspace"):
        ref = diffusers.DPMSolverMultistepScheduler(timestep_spacing=spacing)
        for n in range(1, 1000):
            ref.set_timesteps(n)
            want = ref.timesteps.numpy()
            if len(want) == n + 1:  # trailing: diffusers' extra timestep -1 (n = 61, 103, ...); we keep n
                assert spacing == "trailing" and want[-1] == -1
                want = want[:n]
            np.testing.assert_array_equal(solver_timesteps(1000, n, spacing), want, err_msg=f"{spacing}, n={n}")


# --- whole runs through the sampling loop ------------------------------------------------------
def _toy_model(x: np.ndarray, t: np.ndarray, cond: np.ndarray | None) -> np.ndarray:
    """A smooth, t- and class-dependent stand-in for a network: [B, C, H, W] float32."""
    shift = 0.0 if cond is None else 0.05 * cond.astype(np.float32)[:, None, None, None]
    return (0.3 * np.tanh(x) + 0.001 * t.astype(np.float32)[:, None, None, None] * 0.1 + shift).astype(np.float32)


def _diffusers_run(config: DiffusionConfig, shape: tuple[int, ...], seed: int, cond: np.ndarray | None,
                   guidance: float) -> np.ndarray:
    """diffusers (float64 step code) driven like our loop: x_T, then per step the model on float32
    x, one PCG64 noise draw, the step, x rounded to float32; the result clipped to [-1, 1]."""
    ours = make_scheduler(config)
    module, ref = _oracle(ours)
    rng = np.random.Generator(np.random.PCG64(seed))
    x = rng.standard_normal(shape, dtype=np.float32)
    null = None if cond is None else np.full_like(cond, 10)
    for t in ref.timesteps.numpy():
        tt = np.full(shape[0], t, dtype=np.int64)
        out = _toy_model(x, tt, cond)
        if guidance != 1.0:
            uncond = _toy_model(x, tt, null)
            out = (uncond + np.float32(guidance) * (out - uncond)).astype(np.float32)
        noise = rng.standard_normal(shape, dtype=np.float32)
        x = _ref_step(module, ref, out, int(t), x, noise).astype(np.float32)
    return np.clip(x, -1.0, 1.0)


RUNS = [
    dict(sampler="dpm-solver++", num_inference_steps=10),
    dict(sampler="dpm-solver++", num_inference_steps=20, solver_order=3, beta_schedule="cosine",
         prediction_type="v_prediction", timestep_spacing="trailing"),
    dict(sampler="dpm-solver", num_inference_steps=12, solver_order=3, prediction_type="sample"),
    dict(sampler="sde-dpm-solver++", num_inference_steps=15, solver_type="heun"),
    dict(sampler="sde-dpm-solver++", num_inference_steps=10, solver_order=3,
         use_karras_sigmas=True, beta_schedule="cosine"),
    dict(sampler="unipc", num_inference_steps=10),
    dict(sampler="unipc", num_inference_steps=25, solver_order=3, use_karras_sigmas=True, beta_schedule="cosine"),
    dict(sampler="unipc", num_inference_steps=12, solver_type="bh1", final_sigmas_type="sigma_min",
         timestep_spacing="trailing", disable_corrector=(1,)),
    dict(sampler="unipc", num_inference_steps=8, solver_order=3, predict_x0=False, timestep_spacing="linspace",
         final_sigmas_type="sigma_min", prediction_type="v_prediction", beta_schedule="cosine"),
]


@pytest.mark.parametrize("guidance", [1.0, 1.5])
@pytest.mark.parametrize("run", RUNS, ids=lambda r: "-".join(f"{v}" for v in r.values()))
def test_whole_runs_match_diffusers(run: dict, guidance: float) -> None:
    config = _cfg(**run)
    shape = (4, 1, 6, 6)
    cond = np.arange(4, dtype=np.int64) % 10
    null = np.full(4, 10, dtype=np.int64) if guidance != 1.0 else None
    got = sample(_toy_model, make_scheduler(config), shape, seed=3, cond=cond, null_cond=null, guidance_scale=guidance)
    want = _diffusers_run(config, shape, 3, cond, guidance)
    assert _rel_err(got, want) < TOL
