"""TensorRT builds with the options of `ddpm-export trt` (need tensorrt and a GPU: marked
``tensorrt``, skipped here with the reason; run by tools/gpu_check.sh)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("onnx")
pytest.importorskip("torch")

from ddpm_export.cli import main  # noqa: E402
from ddpm_export.contract.metadata import sha256_file  # noqa: E402
from ddpm_export.errors import BadInputError  # noqa: E402
from ddpm_export.export.onnx import export_onnx  # noqa: E402
from ddpm_export.export.tensorrt import build_engine, engine_onnx_path  # noqa: E402
from ddpm_export.export.trt_failures import BuildFailed  # noqa: E402
from ddpm_export.export.trt_options import BuildOptions  # noqa: E402
from ddpm_export.metrics import errors  # noqa: E402
from ddpm_export.runtime.info import read_info  # noqa: E402

pytestmark = pytest.mark.tensorrt


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("trt-gpu")
    return {form: export_onnx("tiny", out / f"tiny-{form}.onnx", attention=form, min_batch=1, opt_batch=2,
                              max_batch=8, log=lambda s: None).path for form in ("decomposed", "ort-mha")}


def _run_engine(engine, onnx_path, batch=4):
    from ddpm_export.runtime.tensorrt import TensorRTBackend

    info = read_info(onnx_path)
    feeds = info.spec.sample_inputs(batch, seed=7)
    with TensorRTBackend(engine, info.spec, onnx_sha256=sha256_file(onnx_path)) as backend:
        return backend(feeds["x_t"], feeds["t"], feeds.get("class_labels")), feeds


def test_fp16_engine_from_an_fp32_file_with_timing_cache(tiny, tmp_path):
    cache = tmp_path / "trt.cache"
    options = BuildOptions(timing_cache=str(cache), workspace_mib=1024, progress=True)
    engine = tmp_path / "tiny16.plan"
    info = build_engine(tiny["decomposed"], engine, fp16=True, options=options, log=print)
    graph = engine_onnx_path(engine)
    assert engine.stat().st_size > 0 and graph.is_file() and cache.stat().st_size > 0
    assert read_info(graph).precision == "fp16"
    assert info["onnx_file"] == graph.name and info["onnx_sha256"] == sha256_file(graph)
    assert info["converted_from"]["onnx_sha256"] == sha256_file(tiny["decomposed"])
    assert info["precision"] == "fp16" and info["builder"]["workspace_mib"] == 1024
    assert not list(tmp_path.glob("*.lock")) and not list(tmp_path.glob(".*tmp*"))
    size = cache.stat().st_size
    build_engine(tiny["decomposed"], tmp_path / "again.plan", fp16=True, options=options, log=print)
    assert cache.stat().st_size >= size  # read, merged, written back
    import onnxruntime as ort

    out, feeds = _run_engine(engine, graph)
    ref = ort.InferenceSession(str(tiny["decomposed"]), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    rel = errors(out, ref)[1]
    print(f"fp16 engine (fp16 pass) vs ONNX Runtime fp32: rel L2 {rel:.2e}")
    assert np.isfinite(rel) and rel < 2e-2


def test_fp32_engine_matches_onnx_runtime(tiny, tmp_path):
    import onnxruntime as ort

    engine = tmp_path / "tiny32.plan"
    info = build_engine(tiny["decomposed"], engine, options=BuildOptions(progress=False), log=print)
    assert info["precision"] == "fp32" and not engine_onnx_path(engine).exists()
    out, feeds = _run_engine(engine, tiny["decomposed"])
    ref = ort.InferenceSession(str(tiny["decomposed"]), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    max_abs = errors(out, ref)[0]
    print(f"fp32 engine vs ONNX Runtime fp32: max abs {max_abs:.2e}")
    assert max_abs < 1e-4  # TF32 off
    from ddpm_export.runtime.tensorrt import TensorRTBackend

    backend = TensorRTBackend(engine, read_info(tiny["decomposed"]).spec)
    backend.close()
    backend.close()  # idempotent: Pipeline.close() may reach it after a `with` block did
    with pytest.raises(BadInputError, match=r"tiny32.plan: this TensorRT backend is closed; load the engine again"):
        backend(feeds["x_t"], feeds["t"], feeds.get("class_labels"))


def test_a_forced_fp32_rebuild_removes_the_fp16_builds_graph(tiny, tmp_path):
    """The converted graph of an earlier --fp16 build stayed beside the fp32 engine built over it."""
    engine, graph = tmp_path / "e.plan", tmp_path / "e.plan.onnx"
    runner = CliRunner()
    assert runner.invoke(main, ["trt", "--onnx", str(tiny["decomposed"]), "--fp16", "-o", str(engine)]).exit_code == 0
    rebuilt = runner.invoke(main, ["trt", "--onnx", str(graph), "-o", str(engine), "--force"])  # from its own graph
    assert rebuilt.exit_code == 0, rebuilt.output
    assert graph.is_file() and json.loads(engine.with_name("e.plan.json").read_text())["onnx_sha256"] == \
        sha256_file(graph)
    result = runner.invoke(main, ["trt", "--onnx", str(tiny["decomposed"]), "-o", str(engine), "--force"])
    assert result.exit_code == 0, result.output
    assert not graph.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["e.plan", "e.plan.json"]
    assert json.loads(engine.with_name("e.plan.json").read_text())["onnx_sha256"] == sha256_file(tiny["decomposed"])


def test_version_compatible_ampere_plus_engine_runs(tiny, tmp_path):
    engine = tmp_path / "vc.plan"
    info = build_engine(tiny["decomposed"], engine, options=BuildOptions(
        version_compatible=True, hardware_compatibility="ampere+", builder_optimization_level=1), log=print)
    assert info["version_compatible"] is True and info["hardware_compatibility"] == "ampere+"
    out, _ = _run_engine(engine, tiny["decomposed"])  # deserialised with engine_host_code_allowed
    assert np.all(np.isfinite(out))


def test_an_onnx_runtime_only_node_is_named(tiny, tmp_path):
    with pytest.raises(BuildFailed, match="MultiHeadAttention.*--target tensorrt"):
        build_engine(tiny["ort-mha"], tmp_path / "mha.plan", log=print)
    assert list(tmp_path.iterdir()) == []


def test_model_in_one_step_and_verify(tmp_path):
    engine = tmp_path / "tiny16.plan"
    result = CliRunner().invoke(main, ["trt", "--model", "tiny", "--fp16", "-o", str(engine), "--no-progress"])
    assert result.exit_code == 0, result.output
    side = json.loads((tmp_path / "tiny16.plan.json").read_text())
    assert side["precision"] == "fp16" and side["onnx_file"] == "tiny16.plan.onnx"
    result = CliRunner().invoke(main, ["verify", "--model", "tiny", "--onnx", str(engine_onnx_path(engine)),
                                       "--engine", str(engine), "--steps", "10", "--ddpm-steps", "20"])
    print(result.output)
    assert result.exit_code == 0, result.output
