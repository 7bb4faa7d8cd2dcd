"""`ddpm-export trt` on a CPU: option parsing, the builder configuration the options stand for,
the sidecar, and the exit status without TensorRT / CUDA / a GPU (nothing written).

The build itself needs a GPU and the tensorrt package: tests/export/test_tensorrt_gpu.py.
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner

pytest.importorskip("onnx")
pytest.importorskip("torch")

from ddpm_export.cli import main  # noqa: E402
from ddpm_export.configbase import ConfigError  # noqa: E402
from ddpm_export.export.onnx import export_onnx  # noqa: E402
from ddpm_export.export.tensorrt import (  # noqa: E402
    TensorRTUnavailable, build_engine, engine_onnx_path, plan_engine, tensorrt_missing,
)
from ddpm_export.export.trt_options import HARDWARE_LEVELS, BuildOptions, builder_config  # noqa: E402

NO_TENSORRT = pytest.mark.skipif(tensorrt_missing() is None, reason="tensorrt and a GPU are present here")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("trt-options")
    return {p: export_onnx("tiny", out / f"tiny-{p}.onnx", precision=p, target="tensorrt", min_batch=1, opt_batch=2,
                           max_batch=8, validate=False, log=lambda s: None).path for p in ("fp32", "fp16")}


def test_default_builder_config_is_strongly_typed_without_tf32(tiny):
    desc = builder_config(plan_engine(tiny["fp32"]), BuildOptions())
    assert desc == {
        "network": {"strongly_typed": True},
        "profile": {"x_t": {"min": [1, 3, 16, 16], "opt": [2, 3, 16, 16], "max": [8, 3, 16, 16]},
                    "t": {"min": [1], "opt": [2], "max": [8]}},
        "create_config": {"tf32": False, "memory_pool_limits": {}, "load_timing_cache": None,
                          "version_compatible": False, "hardware_compatibility_level": "NONE",
                          "builder_optimization_level": 3, "progress_monitor": True},
    }


def test_every_option_reaches_the_builder_config(tiny, tmp_path):
    cache = str(tmp_path / "trt.cache")
    options = BuildOptions(workspace_mib=1536, timing_cache=cache, version_compatible=True,
                           hardware_compatibility="ampere+", builder_optimization_level=5, progress=False)
    cc = builder_config(plan_engine(tiny["fp16"]), options)["create_config"]
    assert cc == {"tf32": False, "memory_pool_limits": {"WORKSPACE": 1536 * 2**20}, "load_timing_cache": cache,
                  "version_compatible": True, "hardware_compatibility_level": "AMPERE_PLUS",
                  "builder_optimization_level": 5, "progress_monitor": False}
    assert HARDWARE_LEVELS["same-compute-capability"] == "SAME_COMPUTE_CAPABILITY"


def test_the_oldest_tensorrt_each_option_needs():
    """HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY first appears in TensorRT 10.9's Python
    bindings (NVIDIA/TensorRT, python/src/infer/pyCore.cpp at v10.9.0; v10.8.0 has AMPERE_PLUS only)."""
    assert BuildOptions().needs_tensorrt() == (10, 0)
    assert BuildOptions(hardware_compatibility="ampere+", version_compatible=True).needs_tensorrt() == (10, 0)
    assert BuildOptions(hardware_compatibility="same-compute-capability").needs_tensorrt() == (10, 9)


@pytest.mark.parametrize("kwargs, match", [
    ({"workspace_mib": 0}, "workspace_mib: must be >= 1"),
    ({"builder_optimization_level": 6}, "builder_optimization_level: must be in 0..5"),
    ({"hardware_compatibility": "turing+"}, "hardware_compatibility='turing\\+' is not valid; choose one of: "
                                            "'none', 'ampere\\+', 'same-compute-capability'"),
    ({"version_compatible": "yes"}, "version_compatible='yes' has the wrong type"),
])
def test_bad_options_are_refused_by_name(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        BuildOptions(**kwargs)


def test_sidecar_records_what_limits_where_the_engine_runs(tiny):
    plan = plan_engine(tiny["fp16"])
    options = BuildOptions(workspace_mib=512, version_compatible=True, hardware_compatibility="ampere+",
                           timing_cache="x.cache")
    side = plan.sidecar("10.9.0.34", {"name": "NVIDIA H200", "compute_capability": "9.0"}, 3.21, options)
    assert side["version_compatible"] is True and side["hardware_compatibility"] == "ampere+"
    assert side["tensorrt_version"] == "10.9.0.34" and side["gpu"]["compute_capability"] == "9.0"
    assert side["precision"] == "fp16" and side["strongly_typed"] is True and side["tf32"] is False
    assert side["builder"] == {"workspace_mib": 512, "timing_cache": True, "builder_optimization_level": 3}
    default = plan.sidecar("10.9.0.34", {}, 1.0)
    assert default["version_compatible"] is False and default["hardware_compatibility"] == "none"


def test_fp16_is_accepted_for_an_fp32_file_and_fp32_refused_for_an_fp16_one(tiny):
    assert plan_engine(tiny["fp32"], fp16=True).precision == "fp32"  # the build converts it
    with pytest.raises(ValueError, match="is an fp16 graph but fp32 was asked for"):
        plan_engine(tiny["fp16"], fp16=False)
    assert engine_onnx_path("out/m.plan").as_posix() == "out/m.plan.onnx"


@NO_TENSORRT
@pytest.mark.parametrize("args", [
    ["--onnx", "{fp32}", "--fp16", "-o", "{out}/m.plan"],
    ["--onnx", "{fp16}", "--save-engine", "{out}/m.plan", "--timing-cache", "{out}/trt.cache", "--workspace", "64",
     "--version-compatible", "--hardware-compatibility", "ampere+", "--builder-optimization-level", "1"],
    ["--model", "tiny", "--fp16", "--output", "{out}/m.plan", "--max-batch", "4"],
], ids=["fp32-file-fp16", "every-option", "model-one-step"])
def test_without_tensorrt_exit_2_one_line_and_nothing_written(tiny, tmp_path, args):
    out = tmp_path / "out"
    out.mkdir()
    argv = [a.format(fp32=tiny["fp32"], fp16=tiny["fp16"], out=out) for a in args]
    result = CliRunner().invoke(main, ["trt", *argv])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: cannot build") and "pip install" in lines[0], lines
    assert list(out.iterdir()) == []


@NO_TENSORRT
def test_build_engine_without_tensorrt_raises_before_writing(tiny, tmp_path):
    with pytest.raises(TensorRTUnavailable, match="tensorrt"):
        build_engine(tiny["fp32"], tmp_path / "m.plan", fp16=True, options=BuildOptions(timing_cache=str(
            tmp_path / "c")), log=lambda s: None)
    assert list(tmp_path.iterdir()) == []


@NO_TENSORRT
def test_a_killed_builds_scratch_folder_is_swept_by_the_next_build(tiny, tmp_path):
    """The build's scratch folder (the fp16 graph goes there) carries files.temp_sibling's name, so
    the next build of that engine removes one left by a process that no longer runs."""
    import os
    import subprocess
    import sys

    from ddpm_export.files import remove_leftovers

    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)
    left = tmp_path / f".m.plan.tmp-{dead}-{'b' * 32}"
    left.mkdir()
    (left / "m.plan.onnx").write_bytes(b"half an fp16 graph")
    with pytest.raises(TensorRTUnavailable):
        build_engine(tiny["fp32"], tmp_path / "m.plan", fp16=True, log=lambda s: None)
    assert list(tmp_path.iterdir()) == []
    from ddpm_export.files import scratch_folder

    with scratch_folder(tmp_path / "m.plan") as folder:  # the build's own folder: a name the sweep knows
        assert folder.is_dir() and folder.name.startswith(f".m.plan.tmp-{os.getpid()}-")
        assert remove_leftovers(tmp_path / "m.plan") == [] and folder.is_dir()  # a live build's: kept
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, match", [
    ([], "pass exactly one of --onnx and --model"),
    (["--model", "tiny", "--onnx", "{fp32}"], "pass exactly one of --onnx and --model"),
    (["--onnx", "{fp32}", "--max-batch", "4"], "apply to --model"),
    (["--onnx", "{fp32}", "--workspace", "0"], "--workspace"),
    (["--onnx", "{fp32}", "--hardware-compatibility", "turing+"], "--hardware-compatibility"),
    # --model's batch range: before TensorRT is looked for (it read "the 'tensorrt' package is not installed")
    (["--model", "tiny", "--min-batch", "8", "--max-batch", "2"],
     "Error: --min-batch/--opt-batch/--max-batch: need 1 <= min <= opt <= max, got 8/2/2"),
    (["--model", "tiny", "--opt-batch", "20"], "--min-batch/--opt-batch/--max-batch: need 1 <= min <= opt <= max, "
                                               "got 1/20/16"),
])
def test_usage_errors_exit_2(tiny, tmp_path, args, match):
    argv = [a.format(fp32=tiny["fp32"]) for a in args]
    result = CliRunner().invoke(main, ["trt", *argv, "-o", str(tmp_path / "m.plan")])
    assert result.exit_code == 2 and match in result.output, result.output
    assert list(tmp_path.iterdir()) == []


def test_an_fp16_file_with_fp32_asked_exits_2(tiny, tmp_path):
    result = CliRunner().invoke(main, ["trt", "--onnx", str(tiny["fp16"]), "--fp32", "-o", str(tmp_path / "m.plan")])
    assert result.exit_code == 2 and "is an fp16 graph" in result.output
    assert list(tmp_path.iterdir()) == []


def test_existing_engine_is_refused_before_anything_else(tiny, tmp_path):
    engine = tmp_path / "m.plan"
    engine.write_bytes(b"old")
    result = CliRunner().invoke(main, ["trt", "--onnx", str(tiny["fp32"]), "--fp16", "-o", str(engine)])
    assert result.exit_code == 2 and "--force" in result.output
    assert engine.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["m.plan"]


@pytest.mark.parametrize("cache", ["folder", "file/trt.cache"], ids=["a-folder", "under-a-file"])
def test_a_timing_cache_that_cannot_be_written_back_is_refused_before_the_build(tiny, tmp_path, cache):
    """The timing cache is written back after the engine: a path it cannot take was found only then,
    with the engine and its sidecar already written (exit 2 all the same); now before TensorRT is looked for."""
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("not a folder")
    before = sorted(tmp_path.rglob("*"))
    result = CliRunner().invoke(main, ["trt", "--onnx", str(tiny["fp32"]), "-o", str(tmp_path / "m.plan"),
                                       "--timing-cache", str(tmp_path / cache)])
    assert result.exit_code == 2, result.output
    assert "--timing-cache" in result.output and "tensorrt" not in result.output, result.output
    assert sorted(tmp_path.rglob("*")) == before
    with pytest.raises(ValueError, match="--timing-cache"):
        build_engine(tiny["fp32"], tmp_path / "m.plan", options=BuildOptions(timing_cache=str(tmp_path / cache)),
                     log=lambda s: None)
    assert sorted(tmp_path.rglob("*")) == before
