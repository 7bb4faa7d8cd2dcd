"""The multistep solvers through the runtime: Pipeline, threads, the CLI, verify."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("torch")

from ddpm_export import load_model  # noqa: E402
from ddpm_export.cli import main  # noqa: E402
from ddpm_export.diffusion import make_scheduler, sample  # noqa: E402
from ddpm_export.runtime import Pipeline  # noqa: E402
from ddpm_export.torch_backend import TorchBackend  # noqa: E402
from ddpm_export.verify import verify  # noqa: E402

from concurrency import assert_threads_match_sequential  # noqa: E402
from runtime_exports import exported  # noqa: E402


@pytest.fixture(scope="module")
def sink_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return exported("kitchen-sink", tmp_path_factory)


@pytest.fixture(scope="module")
def sink(sink_onnx: Path) -> Pipeline:
    return Pipeline.from_onnx(sink_onnx)


@pytest.mark.parametrize("sampler,steps", [("dpm-solver++", 10), ("unipc", 5), ("sde-dpm-solver++", 6),
                                           ("dpm-solver", 4)])
def test_solver_samples_equal_a_torch_run_of_the_same_loop(sink: Pipeline, sampler: str, steps: int) -> None:
    """With guidance: the conditional and null halves in one batch, guided output into the solver."""
    n = 3
    got = sink.sample(n, sampler=sampler, steps=steps, seed=7, classes=[1, 5, 9], guidance_scale=2.0,
                      progress=False)
    scheduler = make_scheduler(sink.info.diffusion.replace(num_inference_steps=steps), sampler)
    want = sample(TorchBackend(load_model("kitchen-sink")), scheduler, (n, 3, 16, 16), seed=7,
                  cond=np.array([1, 5, 9], dtype=np.int64), null_cond=np.full(n, 10, dtype=np.int64),
                  guidance_scale=2.0)
    assert got.shape == want.shape and got.dtype == np.float32
    assert np.abs(got - want).max() <= 1e-4


def test_threads_share_one_pipeline_across_solvers_bit_identically(sink: Pipeline) -> None:
    """Each call builds its own scheduler, so multistep histories never mix between threads."""
    samplers = ["dpm-solver++", "unipc", "sde-dpm-solver++", "ddim", "dpm-solver++", "unipc"]
    jobs = [dict(sampler=s, seed=i, classes=i % 10, guidance_scale=1.0 + 0.5 * (i % 2)) for i, s in enumerate(samplers)]
    assert_threads_match_sequential(sink, jobs, steps=4)


def test_a_sampler_the_config_cannot_run_is_refused_by_name(sink: Pipeline) -> None:
    with pytest.raises(ValueError, match=re.escape("sampler='dpmpp' is not valid; choose one of: 'ddim', 'ddpm', "
                                                   "'dpm-solver++', 'dpm-solver', 'sde-dpm-solver++', 'unipc'")):
        sink.sample(2, sampler="dpmpp", progress=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="eta applies to the DDIM sampler only"):
        sink.sample(2, sampler="unipc", eta=0.5, progress=False)
    # the message names the steps argument (the config's own part speaks of num_inference_steps)
    with pytest.raises(ValueError, match="sampler='unipc', steps=1000 with this model's DiffusionConfig: "
                                         "num_inference_steps: "):
        sink.sample(2, sampler="unipc", steps=1000, progress=False)  # leading spacing needs n < T for solvers


def test_cli_sample_offers_every_registered_sampler(sink_onnx: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["sample", "--onnx", str(sink_onnx), "-n", "2", "--sampler", "unipc", "--steps", "3",
                                  "--no-progress", "-o", str(tmp_path / "grid.png")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = runner.invoke(main, ["sample", "--onnx", str(sink_onnx), "--sampler", "euler",
                                  "-o", str(tmp_path / "x.png")])
    assert result.exit_code == 2
    assert "'ddim', 'ddpm', 'dpm-solver++', 'dpm-solver', 'sde-dpm-solver++', 'unipc'" in result.output


def test_verify_checks_whole_solver_trajectories(sink_onnx: Path) -> None:
    report = verify("kitchen-sink", sink_onnx, steps=4, ddpm_steps=4, solver_steps=6, guidance_scale=2.0,
                    log=lambda m: None)
    assert report["passed"], report["failures"]
    ort = report["backends"]["onnxruntime"]
    assert list(ort["trajectories"]) == ["ddim", "ddpm", "dpm-solver++", "unipc"]
    for kind in ("dpm-solver++", "unipc"):
        traj = ort["trajectories"][kind]
        assert traj["num_inference_steps"] == 6 and len(traj["x_t_max_abs"]) == 6 and traj["x_t_max_abs"][0] == 0.0
        assert max(traj["local_model_output_max_abs"]) <= 1e-4
        assert traj["final"]["psnr_db"] >= 60 and traj["final_check"] == "passed"
    assert {"onnxruntime.dpm-solver++.final_psnr_db", "onnxruntime.unipc.final_psnr_db"} <= {
        c["name"] for c in report["checks"]}
