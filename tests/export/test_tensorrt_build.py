"""`ddpm-export trt`: everything decided before TensorRT is touched is checked on the CPU; the
build itself needs a GPU and the tensorrt package (marked, skipped here with the reason)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from ddpm_export.cli import main
from ddpm_export.contract.metadata import sha256_file
from ddpm_export.export.onnx import export_onnx
from ddpm_export.export.tensorrt import TensorRTUnavailable, build_engine, plan_engine, tensorrt_missing
from ddpm_export.runtime.tensorrt import read_sidecar, sidecar_path


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory):
    out = tmp_path_factory.mktemp("trt")
    files = {}
    for precision in ("fp32", "fp16"):
        files[precision] = export_onnx("tiny", out / f"tiny-{precision}.onnx", precision=precision,
                                       target="tensorrt", min_batch=1, opt_batch=2, max_batch=8,
                                       log=lambda s: None).path
    return files


def test_plan_takes_profile_precision_and_hash_from_the_file(onnx_files):
    plan = plan_engine(onnx_files["fp16"])
    assert plan.precision == "fp16"
    assert plan.onnx_sha256 == sha256_file(onnx_files["fp16"])
    assert plan.profile == {"x_t": ((1, 3, 16, 16), (2, 3, 16, 16), (8, 3, 16, 16)),
                            "t": ((1,), (2,), (8,))}
    side = plan.sidecar("10.9.0", {"name": "NVIDIA H200", "compute_capability": "9.0"}, 12.34)
    assert side["strongly_typed"] is True and side["tf32"] is False
    assert side["profile"]["x_t"] == {"min": [1, 3, 16, 16], "opt": [2, 3, 16, 16], "max": [8, 3, 16, 16]}
    assert side["onnx_sha256"] == plan.onnx_sha256 and side["onnx_file"] == "tiny-fp16.onnx"
    assert side["build_seconds"] == 12.3


def test_fp32_is_refused_for_an_fp16_graph(onnx_files):
    """(--fp16 on an fp32 file converts it: tests/export/test_trt_options.py)"""
    with pytest.raises(ValueError, match="is an fp16 graph") as info:
        plan_engine(onnx_files["fp16"], fp16=False)
    assert "--precision" in str(info.value)
    assert plan_engine(onnx_files["fp16"], fp16=True).precision == "fp16"


def test_a_foreign_onnx_file_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), str(tmp_path / "relu.onnx"))
    with pytest.raises(ValueError, match="not a ddpm-export ONNX file"):
        plan_engine(tmp_path / "relu.onnx")


@pytest.mark.skipif(tensorrt_missing() is None, reason="tensorrt is installed here")
def test_without_tensorrt_the_build_says_why_and_writes_nothing(onnx_files, tmp_path):
    engine = tmp_path / "tiny.plan"
    with pytest.raises(TensorRTUnavailable, match="pip install 'ddpm-export\\[gpu\\]'"):
        build_engine(onnx_files["fp32"], engine, log=lambda s: None)
    assert list(tmp_path.iterdir()) == []
    result = CliRunner().invoke(main, ["trt", "--onnx", str(onnx_files["fp32"]), "-o", str(engine)])
    assert result.exit_code != 0 and "tensorrt" in result.output
    assert list(tmp_path.iterdir()) == []


def _with_broken(tmp_path, package, message):
    """A real broken install: ``package``'s __init__.py raises ImportError(``message``), first on the path."""
    import os

    folder = tmp_path / "site" / package
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text(f"raise ImportError({message!r})\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path / "site"),
                                                                     os.environ.get("PYTHONPATH")]))}


def test_a_tensorrt_that_fails_to_import_is_named_so_with_its_error(onnx_files, tmp_path):
    """An installed tensorrt whose libnvinfer is missing was reported as "not installed", its
    ImportError dropped: reinstalling the package was the advice, the missing library unnamed."""
    import subprocess
    import sys

    env = _with_broken(tmp_path, "tensorrt", "libnvinfer.so.10: cannot open shared object file")
    engine = tmp_path / "out" / "e.plan"
    proc = subprocess.run([sys.executable, "-m", "ddpm_export", "trt", "--onnx", str(onnx_files["fp32"]), "-o",
                           str(engine)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert (f"cannot build {engine}: the 'tensorrt' package is installed but fails to import (ImportError: "
            f"libnvinfer.so.10: cannot open shared object file); reinstall it (with its CUDA/TensorRT libraries) on a "
            f"machine with an NVIDIA GPU: pip install 'ddpm-export[gpu]'") in " ".join(proc.stderr.split())
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()
    code = ("from ddpm_export.gpu import import_cudart\n"
            "try:\n    import_cudart('the test')\nexcept ImportError as e:\n    print(e)\n")
    env = _with_broken(tmp_path / "cuda-python", "cuda/bindings", "libcudart.so.12: cannot open shared object file")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120).stdout
    assert out.startswith("the test needs cuda-python for device buffers: the 'cuda-python' package is installed but "
                          "fails to import (ImportError: libcudart.so.12: cannot open shared object file)"), out


def test_existing_engine_is_refused_without_force(onnx_files, tmp_path):
    engine = tmp_path / "tiny.plan"
    engine.write_bytes(b"old engine")
    with pytest.raises(FileExistsError, match="--force"):
        build_engine(onnx_files["fp32"], engine, log=lambda s: None)
    assert engine.read_bytes() == b"old engine"


def test_an_earlier_builds_graph_is_refused_without_force_and_kept_until_a_new_engine(onnx_files, tmp_path):
    """`trt --onnx x.onnx -o e.plan --force` over an earlier `--fp16` build left its e.plan.onnx (the
    converted graph) beside the new engine, whose sidecar it does not match. Without --force it is
    refused up front; with it, removed only once the new engine is written (the build needs a GPU:
    tests/export/test_tensorrt_gpu.py); the file a build reads is never its stale graph."""
    from ddpm_export.export.tensorrt import stale_graph

    engine, stale = tmp_path / "e.plan", tmp_path / "e.plan.onnx"
    stale.write_bytes(b"an earlier build's fp16 graph")
    result = CliRunner().invoke(main, ["trt", "--onnx", str(onnx_files["fp32"]), "-o", str(engine)])
    assert result.exit_code == 2, result.output
    assert (f"{stale} exists, the graph an earlier build of e.plan was made from; this build writes none, and the "
            f"new engine would not match it: pass --force to remove it") in " ".join(result.output.split())
    assert stale.read_bytes() == b"an earlier build's fp16 graph" and sorted(tmp_path.iterdir()) == [stale]
    assert stale_graph(engine, None, onnx_files["fp32"], force=True) == stale  # removed after the new engine
    assert stale_graph(engine, stale, onnx_files["fp32"], force=False) is None  # this build writes it (--fp16)
    assert stale_graph(engine, None, stale, force=False) is None  # `trt --onnx e.plan.onnx -o e.plan`
    if tensorrt_missing() is not None:
        result = CliRunner().invoke(main, ["trt", "--onnx", str(onnx_files["fp32"]), "-o", str(engine), "--force"])
        assert result.exit_code == 2 and "tensorrt" in result.output.lower(), result.output
        assert sorted(tmp_path.iterdir()) == [stale]  # no new engine: the earlier graph stays


@pytest.mark.tensorrt
def test_build_writes_engine_and_matching_sidecar(onnx_files, tmp_path):
    for precision, path in onnx_files.items():
        engine = tmp_path / f"tiny-{precision}.plan"
        info = build_engine(path, engine, fp16=precision == "fp16", log=print)
        assert engine.stat().st_size > 0
        side = read_sidecar(engine)
        assert side == json.loads(sidecar_path(engine).read_text()) == info
        assert side["onnx_sha256"] == sha256_file(path) and side["precision"] == precision


def test_a_tensorrt_only_runtime_needs_neither_onnxruntime_nor_onnx_nor_torch():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "for name in ('torch', 'onnxruntime', 'onnx'):\n"
        "    sys.modules[name] = None\n"
        "import ddpm_export.runtime.tensorrt, ddpm_export.runtime\n"
        "from ddpm_export.runtime import Pipeline, verify_bundle\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('torch', 'onnxruntime', 'onnx') and sys.modules[m]]\n"
        "try:\n"
        "    ddpm_export.runtime.OnnxRuntimeBackend\n"
        "except ImportError:\n"
        "    print('ort-backend-needs-onnxruntime')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "ort-backend-needs-onnxruntime" in proc.stdout


def test_a_failed_forced_rebuild_keeps_the_previous_engine_graph_and_sidecar(tmp_path):
    """The engine, the graph it was built from and its sidecar are placed all or none: a rebuild
    whose graph copy failed (ENOSPC in an audit) replaced the engine and deleted its sidecar,
    leaving an engine that is refused beside a stale graph. (The build itself needs a GPU; what is
    written after it does not.)"""
    from ddpm_export.export.tensorrt import _write
    from ddpm_export.export.trt_options import BuildOptions

    engine = tmp_path / "a.plan"
    graph_out = tmp_path / "a.plan.onnx"
    old = {engine: b"old engine", graph_out: b"old graph", sidecar_path(engine): b'{"onnx_sha256": "old"}'}
    for path, data in old.items():
        path.write_bytes(data)
    with pytest.raises(FileNotFoundError):
        _write(engine, b"new engine", tmp_path / "vanished.onnx", graph_out, None, BuildOptions(),
               {"onnx_sha256": "new"}, force=True)
    assert {path: path.read_bytes() for path in old} == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.plan", "a.plan.json", "a.plan.onnx"]  # no temp left
    _write(engine, b"new engine", tmp_path / "vanished.onnx", None, None, BuildOptions(), {"onnx_sha256": "new"},
           force=True)  # the graph not kept: not read
    assert engine.read_bytes() == b"new engine" and read_sidecar(engine) == {"onnx_sha256": "new"}
