"""The sampling loop: whole runs pinned to an independent float64 reference, the noise
convention, classifier-free guidance and argument validation. No mocks: the backends below are
real (tiny, deterministic) models."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ddpm_export.diffusion import DiffusionConfig, Scheduler, make_scheduler, noise_generator, sample
from ddpm_export.errors import BadInputError

SHAPE = (2, 3, 8, 8)
T = 1000


class LinearModel:
    """A deterministic stand-in network: ``eps = 0.1 x_t (+ 0.01 class id)``; records its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]] = []

    def __call__(self, x_t: np.ndarray, t: np.ndarray, cond: np.ndarray | None) -> np.ndarray:
        self.calls.append((x_t.copy(), t.copy(), None if cond is None else cond.copy()))
        out = np.float32(0.1) * x_t
        if cond is not None:
            out = out + np.float32(0.01) * cond.astype(np.float32)[:, None, None, None]
        return out


# --- an independent reference, written from CONVENTIONS.md in plain float64 --------------------

def _reference_abar() -> list[float]:
    """Linear betas computed in float64 and stored float32; abar from those in float64."""
    betas = [float(np.float32(1e-4 + (0.02 - 1e-4) * t / (T - 1))) for t in range(T)]
    abar, prod = [], 1.0
    for b in betas:
        prod *= 1.0 - b
        abar.append(float(np.float32(prod)))
    return abar


def _reference_ddpm(seed: int) -> np.ndarray:
    """1000 ancestral steps, fixed_small, clip, eps = 0.1 x (Ho et al. Algorithm 2)."""
    abar = _reference_abar()
    rng = np.random.Generator(np.random.PCG64(seed))
    x = rng.standard_normal(SHAPE, dtype=np.float32).astype(np.float64)
    for t in range(T - 1, -1, -1):
        z = rng.standard_normal(SHAPE, dtype=np.float32).astype(np.float64)
        eps = 0.1 * x
        a_t, a_prev = abar[t], (abar[t - 1] if t > 0 else 1.0)
        alpha_t = a_t / a_prev
        beta_t = 1.0 - alpha_t
        x0 = np.clip((x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t), -1, 1)
        mean = beta_t * math.sqrt(a_prev) / (1 - a_t) * x0 + (1 - a_prev) * math.sqrt(alpha_t) / (1 - a_t) * x
        var = beta_t * (1 - a_prev) / (1 - a_t)
        x = mean + (math.sqrt(var) * z if t > 0 else 0.0)
    return np.clip(x, -1, 1)


def _reference_ddim(seed: int, eta: float, n: int = 50) -> np.ndarray:
    """n DDIM steps (Song eq. 12), leading spacing, set_alpha_to_one, clip, eps = 0.1 x."""
    abar = _reference_abar()
    rng = np.random.Generator(np.random.PCG64(seed))
    x = rng.standard_normal(SHAPE, dtype=np.float32).astype(np.float64)
    for i in reversed(range(n)):
        t = i * (T // n)
        z = rng.standard_normal(SHAPE, dtype=np.float32).astype(np.float64)
        eps = 0.1 * x
        a_t = abar[t]
        a_prev = abar[t - T // n] if i > 0 else 1.0
        sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t)) * math.sqrt(1 - a_t / a_prev)
        x0 = np.clip((x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t), -1, 1)
        x = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev - sigma**2) * eps + sigma * z
    return np.clip(x, -1, 1)


# Pinned from the float64 references above (seed 0): sum, mean |x|, x[0, 0, 0, :4]. Stock
# diffusers driven with the same noise agrees with the DDIM ones to 3e-6
# (test_diffusion_vs_diffusers.py::test_ddim_loop_matches_diffusers).
PINNED = {
    "ddpm": (8.14404, 0.68371785, [0.1142311, -0.145548, 0.7538607, 0.9694926]),
    "ddim-0.0": (3.730133, 0.69025849, [0.6944193, -0.6954563, -0.6917603, -0.693211]),
    "ddim-1.0": (13.136557, 0.55698663, [0.7234006, -0.5165912, 0.9413744, 0.1613423]),
}


def _assert_pinned(x: np.ndarray, key: str) -> None:
    total, mean_abs, head = PINNED[key]
    assert float(x.sum(dtype=np.float64)) == pytest.approx(total, abs=1e-4)
    assert float(np.abs(x).mean(dtype=np.float64)) == pytest.approx(mean_abs, abs=1e-6)
    np.testing.assert_allclose(x[0, 0, 0, :4], head, rtol=0, atol=1e-5)


def test_ddpm_1000_steps_pinned() -> None:
    scheduler = make_scheduler(DiffusionConfig(sampler="ddpm", num_inference_steps=T))
    x = sample(LinearModel(), scheduler, SHAPE, seed=0)
    assert x.dtype == np.float32 and x.shape == SHAPE
    ref = _reference_ddpm(0)
    np.testing.assert_allclose(x, ref, rtol=0, atol=1e-5)
    _assert_pinned(ref, "ddpm")
    _assert_pinned(x, "ddpm")


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_50_steps_pinned(eta: float) -> None:
    scheduler = make_scheduler(DiffusionConfig(eta=eta))
    assert scheduler.num_inference_steps == 50
    x = sample(LinearModel(), scheduler, SHAPE, seed=0)
    ref = _reference_ddim(0, eta)
    np.testing.assert_allclose(x, ref, rtol=0, atol=1e-5)
    _assert_pinned(ref, f"ddim-{eta}")
    _assert_pinned(x, f"ddim-{eta}")


def test_runs_are_deterministic_and_seed_dependent() -> None:
    scheduler = make_scheduler(DiffusionConfig(eta=1.0, num_inference_steps=10))
    a = sample(LinearModel(), scheduler, SHAPE, seed=7)
    np.testing.assert_array_equal(a, sample(LinearModel(), scheduler, SHAPE, seed=7))
    assert not np.array_equal(a, sample(LinearModel(), scheduler, SHAPE, seed=8))
    assert a.min() >= -1 and a.max() <= 1


# --- noise convention ----------------------------------------------------------------------------

def _draws(seed: int, count: int) -> list[np.ndarray]:
    rng = np.random.Generator(np.random.PCG64(seed))
    return [rng.standard_normal(SHAPE, dtype=np.float32) for _ in range(count)]


def _record(backend: LinearModel, scheduler: Scheduler, **kwargs) -> tuple[list, np.ndarray]:
    steps: list = []
    x = sample(backend, scheduler, SHAPE, callback=lambda *a: steps.append(a), **kwargs)
    return steps, x


def test_noise_generator_is_pcg64() -> None:
    expected = np.random.Generator(np.random.PCG64(123)).standard_normal(5, dtype=np.float32)
    np.testing.assert_array_equal(noise_generator(123).standard_normal(5, dtype=np.float32), expected)


@pytest.mark.parametrize("sampler,eta", [("ddpm", 0.0), ("ddim", 1.0)])
@pytest.mark.parametrize("explicit_x_T", [False, True])
def test_noise_order(sampler: str, eta: float, explicit_x_T: bool) -> None:
    """x_T is the first draw; step i consumes draw i + 1, also when x_T is given explicitly."""
    scheduler = make_scheduler(DiffusionConfig(sampler=sampler, eta=eta, num_inference_steps=5))
    draws = _draws(seed=3, count=6)
    x_T = np.full(SHAPE, 0.5, dtype=np.float32) if explicit_x_T else None
    steps, x = _record(LinearModel(), scheduler, seed=3, x_T=x_T)
    assert [i for i, *_ in steps] == [0, 1, 2, 3, 4]
    assert [t for _, t, *_ in steps] == [int(t) for t in scheduler.timesteps]
    np.testing.assert_array_equal(steps[0][2], x_T if explicit_x_T else draws[0])
    trajectory = [x_t for _, _, x_t, _ in steps]
    for i, (_, t, x_t, out) in enumerate(steps):
        x_prev = scheduler.step(out, t, x_t, draws[i + 1])
        if i + 1 < len(steps):
            np.testing.assert_array_equal(x_prev, trajectory[i + 1])
        else:
            np.testing.assert_array_equal(np.clip(x_prev, -1, 1), x)


def test_callback_sees_model_output() -> None:
    model = LinearModel()
    steps, _ = _record(model, make_scheduler(DiffusionConfig(num_inference_steps=3)), seed=0)
    for (_, t, x_t, out), (x_seen, t_seen, cond_seen) in zip(steps, model.calls):
        np.testing.assert_array_equal(x_t, x_seen)
        assert t_seen.dtype == np.int64 and t_seen.tolist() == [t, t] and cond_seen is None
        np.testing.assert_array_equal(out, np.float32(0.1) * x_t)


# --- classifier-free guidance --------------------------------------------------------------------

COND = np.array([3, 7], dtype=np.int64)
NULL = np.array([10, 10], dtype=np.int64)


def test_guidance_scale_one_is_unguided() -> None:
    scheduler = make_scheduler(DiffusionConfig(num_inference_steps=4))
    with_null, plain = LinearModel(), LinearModel()
    a = sample(with_null, scheduler, SHAPE, seed=1, cond=COND, null_cond=NULL, guidance_scale=1.0)
    b = sample(plain, scheduler, SHAPE, seed=1, cond=COND)
    np.testing.assert_array_equal(a, b)
    assert all(x.shape[0] == 2 and c.tolist() == COND.tolist() for x, _, c in with_null.calls)


def test_guidance_doubles_the_batch_and_combines() -> None:
    scale = 3.0
    scheduler = make_scheduler(DiffusionConfig(num_inference_steps=4))
    model = LinearModel()
    steps, _ = _record(model, scheduler, seed=1, cond=COND, null_cond=NULL, guidance_scale=scale)
    assert len(model.calls) == 4
    for (_, t, x_t, out), (x_seen, t_seen, cond_seen) in zip(steps, model.calls):
        assert x_seen.shape == (4,) + SHAPE[1:]
        np.testing.assert_array_equal(x_seen, np.concatenate([x_t, x_t]))
        assert t_seen.tolist() == [t] * 4
        assert cond_seen.tolist() == [3, 7, 10, 10]
        cond_out = LinearModel()(x_t, t_seen[:2], COND)
        uncond_out = LinearModel()(x_t, t_seen[:2], NULL)
        np.testing.assert_allclose(out, uncond_out + scale * (cond_out - uncond_out), rtol=1e-6, atol=1e-7)


def test_context_conditioning_is_doubled_too() -> None:
    context = np.ones((2, 5, 4), dtype=np.float32)
    seen = []

    def backend(x_t: np.ndarray, t: np.ndarray, cond: np.ndarray | None) -> np.ndarray:
        seen.append(cond.shape)
        return np.float32(0.1) * x_t

    sample(backend, make_scheduler(DiffusionConfig(num_inference_steps=2)), SHAPE, seed=0,
           cond=context, null_cond=np.zeros_like(context), guidance_scale=2.0)
    assert seen == [(4, 5, 4), (4, 5, 4)]


# --- argument validation -------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,error,message", [
    (dict(guidance_scale=2.0), ValueError, "guidance_scale=2.0 needs cond and null_cond"),
    (dict(cond=COND, guidance_scale=2.0), ValueError, "guidance_scale=2.0 needs cond and null_cond"),
    (dict(null_cond=NULL), ValueError, "null_cond needs cond"),
    (dict(cond=COND, null_cond=NULL[:1], guidance_scale=2.0), ValueError, "null_cond must match cond"),
    (dict(cond=COND, null_cond=NULL.astype(np.int32), guidance_scale=2.0), ValueError, "null_cond must match cond"),
    (dict(cond=COND[:1]), ValueError, "cond must have batch size 2"),
    (dict(guidance_scale=float("nan")), ValueError, "guidance_scale must be a finite float"),
    (dict(guidance_scale=1e39), ValueError, "guidance_scale=1e+39 is out of range"),
    (dict(x_T=np.full(SHAPE, 3e38, np.float32)), ValueError, "x_T holds 3e+38; its values must be within +-1000"),
    (dict(x_T=np.zeros((2, 3, 8, 9), np.float32)), ValueError, "x_T must be float32 of shape (2, 3, 8, 8)"),
    (dict(x_T=np.zeros(SHAPE, np.float64)), ValueError, "x_T must be float32"),
    (dict(x_T=[0.0]), TypeError, "x_T must be a numpy array"),
    (dict(cond=[1, 2]), TypeError, "cond must be a numpy array or None, got list"),  # was an AttributeError
    (dict(cond=COND, null_cond=[10, 10], guidance_scale=2.0), TypeError, "null_cond must be a numpy array"),
    (dict(seed=-1), ValueError, "seed must be a non-negative int"),
    (dict(seed=1.5), ValueError, "seed must be a non-negative int"),
])
def test_argument_validation(kwargs: dict, error: type, message: str) -> None:
    kwargs = {"seed": 0, **kwargs}
    scheduler = make_scheduler(DiffusionConfig(num_inference_steps=2))
    with pytest.raises(error) as info:
        sample(LinearModel(), scheduler, SHAPE, **kwargs)
    assert message in str(info.value)


def test_shape_must_be_bchw() -> None:
    with pytest.raises(ValueError, match=r"shape must be \(B, C, H, W\)"):
        sample(LinearModel(), make_scheduler(DiffusionConfig()), (3, 8, 8), seed=0)


@pytest.mark.parametrize("bad,message", [
    (lambda x, t, c: x.astype(np.float16), "backend must return float32 of shape (2, 3, 8, 8); got float16"),
    (lambda x, t, c: np.concatenate([x, x], axis=1), "got float32 (2, 6, 8, 8)"),
    (lambda x, t, c: x.tolist(), "backend must return a numpy array, got list"),
])
def test_backend_output_is_checked(bad, message: str) -> None:
    with pytest.raises(BadInputError) as info:  # a DdpmExportError: a list was refused with a plain TypeError
        sample(bad, make_scheduler(DiffusionConfig(num_inference_steps=2)), SHAPE, seed=0)
    assert message in str(info.value)
