"""TorchBackend around the real reference model (no mocks): shapes, equality with calling the
model directly, eval mode, and short sampling loops through the numpy loop."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="TorchBackend needs torch (the export extra)")

from ddpm_export import load_model  # noqa: E402
from ddpm_export.diffusion import DiffusionConfig, make_scheduler, sample  # noqa: E402
from ddpm_export.torch_backend import TorchBackend  # noqa: E402


@pytest.fixture(scope="module")
def tiny() -> TorchBackend:
    return TorchBackend(load_model("tiny"))


def _inputs(batch: int, channels: int = 3, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, channels, size, size), dtype=np.float32)
    t = np.array([999, 500, 3, 0][:batch], dtype=np.int64)
    return x, t


def test_shapes_and_equality_with_the_model(tiny: TorchBackend) -> None:
    x, t = _inputs(3)
    out = tiny(x, t, None)
    assert out.dtype == np.float32 and out.shape == (3, 3, 16, 16)
    assert not tiny.model.training
    with torch.no_grad():
        direct = tiny.model(torch.from_numpy(x), torch.from_numpy(t)).numpy()
    np.testing.assert_array_equal(out, direct)
    # each sample of the batch is independent of the others
    np.testing.assert_allclose(tiny(x[1:2], t[1:2], None), out[1:2], rtol=1e-5, atol=1e-6)


def test_short_ddim_loop_is_deterministic(tiny: TorchBackend) -> None:
    scheduler = make_scheduler(DiffusionConfig(num_inference_steps=5))
    a = sample(tiny, scheduler, (2, 3, 16, 16), seed=0)
    b = sample(tiny, scheduler, (2, 3, 16, 16), seed=0)
    assert a.dtype == np.float32 and a.shape == (2, 3, 16, 16) and np.all(np.isfinite(a))
    assert a.min() >= -1 and a.max() <= 1
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, sample(tiny, scheduler, (2, 3, 16, 16), seed=1))


def test_class_conditional_guidance_in_eval_mode() -> None:
    # kitchen-sink: 10 classes (+ null id 10) by cross-attention, dropout 0.1 (off in eval)
    backend = TorchBackend(load_model("kitchen-sink"))
    x, t = _inputs(2)
    cond = np.array([1, 7], dtype=np.int64)
    np.testing.assert_array_equal(backend(x, t, cond), backend(x, t, cond))
    scheduler = make_scheduler(DiffusionConfig(num_inference_steps=3, eta=1.0))
    kwargs = dict(seed=0, cond=cond, null_cond=np.full(2, 10, dtype=np.int64), guidance_scale=3.0)
    a = sample(backend, scheduler, (2, 3, 16, 16), **kwargs)
    np.testing.assert_array_equal(a, sample(backend, scheduler, (2, 3, 16, 16), **kwargs))
    assert np.all(np.isfinite(a))


@pytest.mark.parametrize("x_dtype,t_dtype,message", [
    (np.float64, np.int64, "x_t must be a numpy float32 array, got float64"),
    (np.float32, np.int32, "t must be a numpy int64 array, got int32"),
])
def test_input_dtypes_are_checked(tiny: TorchBackend, x_dtype: type, t_dtype: type, message: str) -> None:
    x, t = _inputs(1)
    with pytest.raises(TypeError, match=message):
        tiny(x.astype(x_dtype), t.astype(t_dtype), None)
