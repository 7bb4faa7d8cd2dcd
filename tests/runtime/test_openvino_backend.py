"""The OpenVINO backend and the ``threads`` option of every CPU backend, on real exports of
``tiny`` (untrained) and the shipped ``digits`` model, against ONNX Runtime on the same file.

Tolerances (measured on a 2-core AMD EPYC with AVX-512 BF16, OpenVINO 2026.4):
- f32: one call max abs <= 1e-4 (the fp32 export's own limit; measured ~1e-6 on digits), and
  digits DDIM-10 samples within 1e-4 of ONNX Runtime's (measured 9e-7).
- bf16: bfloat16 keeps 8 mantissa bits (relative rounding 2^-9 ~ 2e-3 per operation); one digits
  call within relative L2 2e-2 (measured 3.9e-3), and digits DDIM-10 samples at PSNR >= 40 dB
  against ONNX Runtime's fp32 (the bf16 verify threshold; measured 56 dB over DDIM-50).
  ``tiny`` is not used for bf16 trajectories: its untrained network amplifies a one-ulp change
  of x_T to ~18 dB (see ddpm_export.verify), so no bf16 bound on its samples would mean anything.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="the exports need torch")
pytest.importorskip("onnx")

from click.testing import CliRunner  # noqa: E402

from ddpm_export.cli import main  # noqa: E402
from ddpm_export.metrics import BF16_FINAL_PSNR_DB, compare, errors  # noqa: E402
from ddpm_export.runtime import Pipeline, make_bundle  # noqa: E402
from ddpm_export.contract.choices import BACKENDS  # noqa: E402
from ddpm_export.runtime.backends import CPU_BACKENDS, default_threads  # noqa: E402

from runtime_exports import exported  # noqa: E402

OPENVINO_MISSING = importlib.util.find_spec("openvino") is None
needs_openvino = pytest.mark.skipif(OPENVINO_MISSING, reason="openvino is not installed "
                                    "(pip install 'ddpm-export[openvino]'; ./dev installs it)")


@pytest.fixture(scope="module")
def digits_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return exported("digits", tmp_path_factory)


def _one_call(pipe: Pipeline, batch: int = 4) -> np.ndarray:
    feeds = pipe.info.spec.sample_inputs(batch, seed=3)
    return pipe.backend(*feeds.values()) if len(feeds) == 3 else pipe.backend(feeds["x_t"], feeds["t"], None)


def test_the_registry_names_every_backend() -> None:
    assert list(CPU_BACKENDS) == ["onnxruntime", "openvino"]
    assert set(CPU_BACKENDS) <= set(BACKENDS) and "tensorrt" in BACKENDS


@needs_openvino
def test_openvino_f32_matches_onnxruntime(digits_onnx: Path) -> None:
    ort = Pipeline.from_onnx(digits_onnx, threads=1)
    ov = Pipeline.from_onnx(digits_onnx, backend="openvino", threads=1, inference_precision="f32")
    assert ov.backend.inference_precision == "f32" and ov.backend.threads == 1
    assert errors(_one_call(ov), _one_call(ort))[0] <= 1e-4
    a = ov.sample(4, steps=10, seed=5, guidance_scale=1.5, progress=False)
    b = ort.sample(4, steps=10, seed=5, guidance_scale=1.5, progress=False)
    assert a.shape == (4, 1, 16, 16) and float(np.abs(a - b).max()) <= 1e-4


@needs_openvino
def test_openvino_bf16_stays_within_its_threshold(digits_onnx: Path) -> None:
    ort = Pipeline.from_onnx(digits_onnx, threads=1)
    ov = Pipeline.from_onnx(digits_onnx, backend="openvino", threads=1, inference_precision="bf16")
    if ov.backend.inference_precision != "bf16":
        pytest.skip(f"OpenVINO computes {ov.backend.inference_precision} here (no BF16 on this CPU)")
    max_abs, rel_l2 = errors(_one_call(ov), _one_call(ort))
    assert 0 < rel_l2 <= 2e-2  # really bf16 (not bit-equal), and close
    a = ov.sample(8, steps=10, seed=1, progress=False)
    b = ort.sample(8, steps=10, seed=1, progress=False)
    assert compare(a, b)["psnr_db"] >= BF16_FINAL_PSNR_DB


@needs_openvino
def test_openvino_samples_a_bundle(tiny_onnx: Path, tmp_path: Path) -> None:
    bundle = make_bundle([tiny_onnx], tmp_path / "bundle")
    a = Pipeline.from_bundle(bundle, backend="openvino", inference_precision="f32").sample(2, steps=3, progress=False)
    b = Pipeline.from_onnx(tiny_onnx, backend="openvino", inference_precision="f32").sample(2, steps=3, progress=False)
    np.testing.assert_array_equal(a, b)


def test_threads_reach_onnxruntime(tiny_onnx: Path) -> None:
    pipe = Pipeline.from_onnx(tiny_onnx, threads=2)
    opts = pipe.backend.session.get_session_options()
    assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (2, 1)
    # tiny is a small model: one thread by default (see ddpm_export.runtime.backends)
    assert default_threads(tiny_onnx, "onnxruntime") == 1 and default_threads(tiny_onnx, "openvino") is None
    assert Pipeline.from_onnx(tiny_onnx).backend.session.get_session_options().intra_op_num_threads == 1


def test_a_models_size_counts_its_external_data_under_any_name(tiny_onnx: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Only <name>.data was counted: a large model whose weights are in weights.bin got one thread."""
    import onnx

    import ddpm_export.runtime.backends as backends

    path = tmp_path / "m.onnx"
    onnx.save_model(onnx.load(str(tiny_onnx)), str(path), save_as_external_data=True, location="weights.bin",
                    size_threshold=0)
    graph, weights = path.stat().st_size, (tmp_path / "weights.bin").stat().st_size
    monkeypatch.setattr(backends, "SMALL_MODEL_BYTES", graph + weights + 1)  # just larger than the model
    assert default_threads(path, "onnxruntime") == 1
    monkeypatch.setattr(backends, "SMALL_MODEL_BYTES", graph + weights)  # the model is that large: not small
    assert default_threads(path, "onnxruntime") is None


@pytest.mark.parametrize("kwargs, match", [
    (dict(backend="tflite"), "backend='tflite' is not valid; choose one of: 'onnxruntime', 'openvino'"),
    (dict(inference_precision="bf16"), "inference_precision does not apply to the onnxruntime backend"),
    (dict(threads=0), r"threads must be an int in \[1, 1024\], got 0"),
    (dict(threads=10**6), r"threads must be an int in \[1, 1024\], got 1000000"),  # ORT allocated 24 GB
    (dict(threads=10**20), r"threads must be an int in \[1, 1024\]"),  # was onnxruntime's TypeError
    (dict(backend="openvino", inference_precision="fp8"), "inference_precision='fp8' is not valid"),
    (dict(backend="tensorrt"), "backend='tensorrt' runs a bundle's engine"),
])
def test_bad_backend_options_are_refused_by_name(tiny_onnx: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Pipeline.from_onnx(tiny_onnx, **kwargs)


@needs_openvino
def test_verify_holds_openvino_to_the_precision_it_computes(tiny_onnx: Path, tmp_path: Path) -> None:
    """bf16 arithmetic gets the bf16 limits whether the file is fp32 or fp16 (bfloat16 keeps 8
    mantissa bits, fp16 11: an fp16 file computed in bf16 is a bf16 computation); f32 arithmetic
    keeps the file's own precision."""
    from ddpm_export.export.onnx import export_onnx
    from ddpm_export.runtime.backends import effective_precision

    fp16 = export_onnx("tiny", tmp_path / "tiny-fp16.onnx", precision="fp16", max_batch=4, log=lambda line: None).path
    for path, precision in ((tiny_onnx, "fp32"), (fp16, "fp16")):
        f32 = Pipeline.from_onnx(path, backend="openvino", threads=1, inference_precision="f32")
        assert effective_precision(precision, f32.backend) == precision
        bf16 = Pipeline.from_onnx(path, backend="openvino", threads=1, inference_precision="bf16")
        if bf16.backend.inference_precision == "bf16":
            assert effective_precision(precision, bf16.backend) == "bf16"
    onnxruntime = Pipeline.from_onnx(fp16, threads=1)
    assert effective_precision("fp16", onnxruntime.backend) == "fp16"


@needs_openvino
def test_sample_and_verify_cli_run_openvino(tiny_onnx: Path, digits_onnx: Path, tmp_path: Path) -> None:
    out = tmp_path / "grid.png"
    result = CliRunner().invoke(main, ["--threads", "1", "sample", "--onnx", str(tiny_onnx), "--backend", "openvino",
                                       "-n", "2", "--steps", "2", "-o", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert out.is_file()
    result = CliRunner().invoke(main, ["verify", "--model", "tiny", "--onnx", str(tiny_onnx), "--backend", "openvino",
                                       "--inference-precision", "f32", "--steps", "5", "--ddpm-steps", "10"])
    assert result.exit_code == 0, result.output
    assert "openvino (fp32)" in result.output
    result = CliRunner().invoke(main, ["verify", "--model", "digits", "--onnx", str(digits_onnx), "--backend",
                                       "openvino", "--inference-precision", "bf16", "--steps", "10",
                                       "--ddpm-steps", "20"])
    if "openvino (bf16)" not in result.output:
        pytest.skip("OpenVINO does not compute bf16 on this CPU")
    assert result.exit_code == 0, result.output
    # sample says what it computed, not only what the file holds
    result = CliRunner().invoke(main, ["sample", "--onnx", str(tiny_onnx), "--backend", "openvino",
                                       "--inference-precision", "bf16", "-n", "2", "--steps", "2",
                                       "-o", str(tmp_path / "bf16.png"), "--no-progress"])
    assert result.exit_code == 0 and "3x16x16, fp32 file computed in bf16)" in result.output, result.output
