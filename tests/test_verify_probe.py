"""The reference probe behind verify's ``ill_conditioned`` verdict for low precisions: PyTorch
with random errors of the candidate's own per-call size. On the trained digits model, a guided
DDIM-50 run at batch 8 turns int8-sized errors into 31-34 dB whatever makes them, so the int8
file's 31 dB there is the trajectory's, not the file's; an eps bias of the same size still fails
on the trajectories that do not amplify it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ddpm_export.verify import NOISE_PROBE, PROBE_MARGIN_DB, ULP_PROBE, _final_state, _noisy


def _double(x: np.ndarray, t: np.ndarray, c: np.ndarray | None) -> np.ndarray:
    return x * np.float32(2)


def test_the_noise_has_each_calls_measured_relative_size_capped_at_the_step_limit() -> None:
    x = np.random.default_rng(0).standard_normal((2, 1, 4, 4)).astype(np.float32)
    t = np.zeros(2, np.int64)
    for cap, want in ((0.05, (0.01, 0.05, 0.03)), (None, (0.01, 0.2, 0.03))):
        noisy = _noisy(_double, [0.01, 0.2, 0.03], cap, seed=3)
        for rel in want:
            out = noisy(x, t, None)
            assert out.dtype == np.float32
            got = np.linalg.norm(out.astype(np.float64) - 2 * x) / np.linalg.norm(2 * x.astype(np.float64))
            assert got == pytest.approx(rel, rel=1e-5)
    a, b = (_noisy(_double, [0.01], None, seed=s)(x, t, None) for s in (3, 3))
    assert np.array_equal(a, b) and not np.array_equal(a, _noisy(_double, [0.01], None, seed=4)(x, t, None))


def test_the_final_state_needs_the_reference_to_miss_too_and_the_candidate_near_it() -> None:
    noise, ulp = NOISE_PROBE, ULP_PROBE
    assert _final_state(33.0, 36.0, noise, 35.0) == "failed"  # PyTorch holds 35 dB under such errors
    assert _final_state(33.0, 34.0, noise, 35.0) == "ill_conditioned"
    assert _final_state(34.0 - PROBE_MARGIN_DB - 0.1, 34.0, noise, 35.0) == "failed"  # coherent: far below random
    assert _final_state(10.0, 20.0, ulp, 60.0) == "ill_conditioned"  # fp32: judged by the local errors
    assert _final_state(10.0, None, ulp, 60.0) == "failed"  # identical to itself: well-conditioned
    assert _final_state(10.0, float("nan"), noise, 35.0) == "failed"  # a NaN per-call error made a NaN probe


@pytest.mark.slow
def test_guided_int8_digits_at_batch_8_is_ill_conditioned_and_a_biased_file_still_fails(tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="the reference side needs torch")
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    from ddpm_export.export.onnx import export_onnx
    from ddpm_export.verify import verify

    path = export_onnx("digits", tmp_path / "digits-int8.onnx", precision="int8",
                       log=lambda s: None).path  # max_batch 16: batch 8 guided
    run = dict(steps=50, ddpm_steps=5, solvers=("dpm-solver++",), batch=8, guidance_scale=1.5, threads=1,
               log=lambda s: None)
    report = verify("digits", path, **run)
    ddim = report["backends"]["onnxruntime"]["trajectories"]["ddim"]
    # measured: 31.3 dB (ONNX Runtime 1.32), PyTorch with such noise 31.4-34.3 dB over three draws
    assert ddim["final"]["psnr_db"] < 35 and ddim["final_check"] == "ill_conditioned", ddim["final"]
    assert ddim["reference_probe"] == NOISE_PROBE and ddim["reference_self_psnr_db"] < 35
    assert report["passed"], report["failures"]

    model = onnx.load(str(path))  # eps + 0.01 everywhere: per call about as large as int8's own error
    inits = {i.name: i for i in model.graph.initializer}
    conv_out = next(n for n in model.graph.node if n.name == "/unet/conv_out/Conv")
    bias = inits[conv_out.input[2]]
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + np.float32(0.01), bias.name))
    onnx.save(model, str(tmp_path / "biased.onnx"))
    report = verify("digits", tmp_path / "biased.onnx", **run)
    solver = report["backends"]["onnxruntime"]["trajectories"]["dpm-solver++"]
    assert solver["final_check"] == "failed" and solver["reference_self_psnr_db"] >= 35, solver["final"]
    assert not report["passed"] and any(
        f.startswith("onnxruntime: DPM-SOLVER++-10 final-sample PSNR") and "random errors of this backend's per-call "
        "size" in f for f in report["failures"]), report["failures"]


def test_a_miss_below_the_margin_says_pytorch_missed_too() -> None:
    """The failed check's message read as if PyTorch held the limit when it had missed too and
    the backend failed only on the margin."""
    from ddpm_export.verify import THRESHOLDS, _checks

    def results(probe_db: float) -> dict:
        ddim = {"num_inference_steps": 50, "local_max_abs": 0.1, "local_rel_l2": 0.01, "local_output_scale": 1.0,
                "final": {"psnr_db": 26.0},
                "final_check": _final_state(26.0, probe_db, NOISE_PROBE, 35.0), "reference_probe": NOISE_PROBE,
                "reference_self_psnr_db": probe_db}
        return {"onnxruntime": {"single_step": {"max_abs": 0.1, "rel_l2": 0.01, "output_scale": 1.0},
                                "trajectories": {"ddim": ddim}}}

    for probe_db, says in ((33.0, "33.00 dB, below the limit too, but this backend ends more than 6 dB below it"),
                           (45.0, "45.00 dB)")):
        final = [c for c in _checks(results(probe_db), {"onnxruntime": THRESHOLDS["int8"]}, {"onnxruntime": "int8"})
                 if c["name"].endswith("final_psnr_db")][0]
        assert not final["passed"] and says in final["message"], final["message"]
