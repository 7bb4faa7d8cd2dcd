"""Bad-input corpus, runtime arguments: shapes, dtypes, ranges and absurd sizes, refused by
``Pipeline.sample`` (a BadInputError naming the argument: exit 2 in the CLI) before any model
call or allocation; the same through ``ddpm-export sample`` and ``ddpm-export onnx``."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

pytest.importorskip("torch", reason="the exports need torch")
pytest.importorskip("onnx")

from ddpm_export.errors import BadInputError, exit_status  # noqa: E402
from ddpm_export.runtime import Pipeline  # noqa: E402

from bad_inputs import expect_failure  # noqa: E402
from runtime_exports import exported  # noqa: E402


@pytest.fixture(scope="module")
def pipes(tmp_path_factory) -> dict[str, Pipeline]:
    return {name: Pipeline.from_onnx(exported(name, tmp_path_factory)) for name in ("tiny", "kitchen-sink")}


X = np.zeros((2, 3, 16, 16), np.float32)
CASES = {
    "n-zero": ("tiny", dict(n=0), "n must be an int >= 1, got 0"),
    "n-text": ("tiny", dict(n="4"), "n must be an int >= 1, got '4'"),
    "n-float": ("tiny", dict(n=2.0), "n must be an int >= 1"),
    "n-absurd": ("tiny", dict(n=10**12), "n=1000000000000: the images would need .* GiB, more than this machine's"),
    "steps-zero": ("tiny", dict(n=2, steps=0), "steps must be an int in \\[1, 1000\\]"),
    "steps-above-T": ("tiny", dict(n=2, steps=1001), "steps must be an int in \\[1, 1000\\]"),
    "seed-negative": ("tiny", dict(n=2, seed=-1), "seed must be a non-negative int"),
    "sampler-unknown": ("tiny", dict(n=2, sampler="euler"), "sampler='euler' is not valid; choose one of"),
    "eta-above-1": ("tiny", dict(n=2, eta=2.0), "eta must be a float in \\[0, 1\\]"),
    "eta-with-ddpm": ("tiny", dict(n=2, sampler="ddpm", eta=0.5), "eta applies to the DDIM sampler only"),
    "guidance-nan": ("kitchen-sink", dict(n=2, guidance_scale=float("nan")), "guidance_scale must be a finite"),
    "guidance-unconditional": ("tiny", dict(n=2, guidance_scale=2.0), "needs a class-conditional model"),
    "classes-to-unconditional": ("tiny", dict(n=2, classes=3), "classes: this model is unconditional"),
    "class-out-of-range": ("kitchen-sink", dict(n=2, classes=10), "10"),
    "class-negative": ("kitchen-sink", dict(n=2, classes=-1), "-1"),
    "x_T-wrong-shape": ("tiny", dict(n=2, x_T=X[:, :1]), "x_T must be float32 of shape \\(2, 3, 16, 16\\)"),
    "x_T-float64": ("tiny", dict(n=2, x_T=X.astype(np.float64)), "x_T must be float32"),
    "x_T-nan": ("tiny", dict(n=2, x_T=np.full_like(X, np.nan)), "x_T must be finite"),
    "x_T-list": ("tiny", dict(n=2, x_T=X.tolist()), "x_T must be a numpy array"),
}


@pytest.mark.parametrize("name", CASES)
def test_bad_sample_arguments(pipes, name):
    model, kwargs, message = CASES[name]
    tracemalloc.start()
    try:
        with pytest.raises(BadInputError, match=message) as info:
            pipes[model].sample(**kwargs)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert exit_status(info.value) == 2
    assert peak < 64 * 2**20, f"{peak / 2**20:.0f} MiB allocated before the refusal"


def test_absurd_image_count_in_the_cli(tmp_path):
    expect_failure(["sample", "-n", str(10**13), "-o", tmp_path / "x.png", "--no-progress"], 2,
                   "-n 10000000000000: the images would need", watch=[tmp_path])


def test_absurd_max_batch_in_the_cli(tmp_path):
    expect_failure(["onnx", "--model", "tiny", "-o", tmp_path / "t.onnx", "--max-batch", str(10**9)], 2,
                   "--max-batch", "1000000000 is not in the range 1<=x<=4096", watch=[tmp_path])


def test_absurd_max_batch_in_the_library(tmp_path):
    from ddpm_export.export.onnx import export_onnx

    with pytest.raises(BadInputError, match="max_batch: 1000000000 is more than 4096"):
        export_onnx("tiny", tmp_path / "t.onnx", max_batch=10**9, log=lambda m: None)
    assert list(tmp_path.iterdir()) == []


def test_backend_refuses_bad_feeds(pipes):
    backend = pipes["tiny"].backend
    for x, t, message in [(X[:, :2], np.zeros(2, np.int64), "x_t: shape"),
                          (X, np.zeros(2, np.int32), "t: dtype int32, expected int64"),
                          (X, np.full(2, 1000, np.int64), "t: values must be in \\[0, 1000\\)"),
                          (np.zeros((9, 3, 16, 16), np.float32), np.zeros(9, np.int64), "batch 9 is outside")]:
        with pytest.raises(BadInputError, match=message):
            backend(x, t, None)
