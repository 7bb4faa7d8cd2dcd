"""ONNX Runtime's CUDA and TensorRT execution providers as backends. Here (onnxruntime without GPU
providers) a GPU backend must refuse to run rather than fall back to the CPU; the providers it
would ask for are checked as data. The GPU runs are marked ``gpu``."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

ort = pytest.importorskip("onnxruntime")

from ddpm_export.contract.spec import ExportSpec  # noqa: E402
from ddpm_export.errors import MissingDependencyError  # noqa: E402
from ddpm_export.runtime import Pipeline  # noqa: E402
from ddpm_export.runtime.ort_gpu import ORT_GPU_BACKENDS, ProviderUnavailable, provider_options  # noqa: E402

SPEC = ExportSpec(in_channels=1, out_channels=1, sample_size=16, cond_kind="class", num_class_rows=11,
                  min_batch=1, opt_batch=4, max_batch=8)
HAS = set(ort.get_available_providers())


def test_cuda_provider_options():
    assert provider_options("ort-cuda", SPEC, device=1) == [("CUDAExecutionProvider", {"device_id": 1})]
    with pytest.raises(ValueError, match="apply to backend='ort-tensorrt' only"):
        provider_options("ort-cuda", SPEC, fp16=True)
    with pytest.raises(ValueError, match="choose one of: 'ort-cuda', 'ort-tensorrt'"):
        provider_options("cuda", SPEC)


def test_tensorrt_provider_options_profile_fp16_and_cache(tmp_path):
    (name, trt), cuda = provider_options("ort-tensorrt", SPEC, fp16=True, cache_dir=tmp_path)
    assert name == "TensorrtExecutionProvider" and cuda == ("CUDAExecutionProvider", {"device_id": 0})
    assert trt == {"device_id": 0, "trt_fp16_enable": True,
                   "trt_profile_min_shapes": "x_t:1x1x16x16,t:1,class_labels:1",
                   "trt_profile_opt_shapes": "x_t:4x1x16x16,t:4,class_labels:4",
                   "trt_profile_max_shapes": "x_t:8x1x16x16,t:8,class_labels:8",
                   "trt_engine_cache_enable": True, "trt_engine_cache_path": str(tmp_path),
                   "trt_timing_cache_enable": True, "trt_timing_cache_path": str(tmp_path)}
    (_, keyed), _ = provider_options("ort-tensorrt", SPEC, cache_dir=tmp_path, model_key="0123456789abcdef")
    assert keyed["trt_engine_cache_path"] == str(tmp_path / "0123456789abcdef")  # one folder per file's sha256
    assert keyed["trt_timing_cache_path"] == str(tmp_path)  # timings hold no weights: shared
    (_, plain), _ = provider_options("ort-tensorrt", SPEC)
    assert "trt_engine_cache_enable" not in plain and plain["trt_fp16_enable"] is False


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("torch")
    from ddpm_export.export.onnx import export_onnx

    return export_onnx("tiny", tmp_path_factory.mktemp("ortgpu") / "tiny.onnx", min_batch=1, opt_batch=2,
                       max_batch=4, validate=False, log=lambda s: None).path


@pytest.mark.parametrize("backend", list(ORT_GPU_BACKENDS))
def test_a_missing_provider_is_an_error_not_a_cpu_run(tiny, backend):
    if ORT_GPU_BACKENDS[backend] in HAS:
        pytest.skip(f"{ORT_GPU_BACKENDS[backend]} is available here")
    with pytest.raises(ProviderUnavailable, match=f"no {ORT_GPU_BACKENDS[backend]}.*onnxruntime-gpu"):
        Pipeline.from_onnx(tiny, backend=backend)


@pytest.mark.skipif("CUDAExecutionProvider" in HAS, reason="onnxruntime here has the CUDA provider")
@pytest.mark.parametrize("backend", list(ORT_GPU_BACKENDS))
def test_onnxruntime_gpu_shadowed_by_onnxruntime_says_how_to_undo_it(tmp_path, monkeypatch, backend):
    """onnxruntime-gpu installed, then onnxruntime again (``pip install 'ddpm-export[plot]'`` does
    that): the CPU build holds the folder both install into. "Install onnxruntime-gpu" would change
    nothing (pip: already satisfied); the error says to reinstall it after removing both."""
    from ddpm_export.presets import shipped_onnx

    info = tmp_path / "onnxruntime_gpu-1.31.1.dist-info"  # what pip leaves of onnxruntime-gpu beside onnxruntime
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: onnxruntime-gpu\nVersion: 1.31.1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ProviderUnavailable, match=r"\(available: [^)]*\); onnxruntime-gpu 1\.31\.1 is installed, but "
                       r"so is onnxruntime .*: pip uninstall -y onnxruntime onnxruntime-gpu && "
                       r"pip install onnxruntime-gpu==1\.31\.1$"):
        Pipeline.from_onnx(shipped_onnx("digits"), backend=backend)
    with pytest.raises(MissingDependencyError, match=r"needs onnxruntime-gpu: onnxruntime-gpu 1\.31\.1 is installed"):
        Pipeline.from_onnx(shipped_onnx("digits"), providers=["CUDAExecutionProvider"])


#: Python's own import of an onnxruntime folder without __init__.py (a namespace package), placed
#: before site-packages: what is left when `pip uninstall onnxruntime` removes the files it shares
#: with an installed onnxruntime-gpu (capi/'s GPU provider libraries stay)
EMPTIED_ORT = """
import importlib.machinery, sys

FOLDER = sys.argv.pop(1)

class EmptiedOnnxruntimeFolder:
    def find_spec(self, name, path=None, target=None):
        if name != "onnxruntime":
            return None
        spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
        spec.submodule_search_locations = [FOLDER]
        return spec

sys.meta_path.insert(0, EmptiedOnnxruntimeFolder())
from ddpm_export.cli import main
main()
"""


@pytest.mark.parametrize("backend", ["onnxruntime", "ort-cuda"])
def test_an_onnxruntime_folder_emptied_by_uninstalling_its_twin_is_named(tmp_path, backend):
    """onnxruntime and onnxruntime-gpu both installed, then one uninstalled (README: onnxruntime-gpu
    *in place of* onnxruntime): `import onnxruntime` still succeeds, on the empty folder, and
    sample died with an AttributeError traceback (exit 1). It is named now, with the way out."""
    import subprocess
    import sys

    from ddpm_export.presets import shipped_onnx

    folder = tmp_path / "site-packages" / "onnxruntime"
    (folder / "capi").mkdir(parents=True)
    (folder / "capi" / "libonnxruntime_providers_cuda.so").write_bytes(b"")
    result = subprocess.run([sys.executable, "-c", EMPTIED_ORT, str(folder), "sample", "--onnx",
                             str(shipped_onnx("digits")), "--backend", backend, "-n", "1", "-o",
                             str(tmp_path / "out" / "x.png")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.splitlines() == [
        f"Error: ONNX Runtime is broken here: {folder} holds no onnxruntime package, only what pip left of the folder "
        f"that onnxruntime and onnxruntime-gpu share when one of them was uninstalled; reinstall one: pip uninstall "
        f"-y onnxruntime onnxruntime-gpu && pip install onnxruntime (or onnxruntime-gpu)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site-packages"]


@pytest.mark.parametrize("command", ["sample", "bundle"])
def test_an_emptied_onnxruntime_folder_is_named_for_an_unreadable_file_too(tmp_path, command):
    """A file the wire scan cannot read goes to ONNX Runtime for its error message: there the emptied
    folder was an AttributeError traceback ('no attribute SessionOptions', exit 1)."""
    import subprocess
    import sys

    from ddpm_export.presets import shipped_onnx

    folder = tmp_path / "site-packages" / "onnxruntime"
    folder.mkdir(parents=True)
    bad = tmp_path / "cut.onnx"
    bad.write_bytes(shipped_onnx("digits").read_bytes()[:1000])  # truncated: no well-formed message
    args = (["sample", "--onnx", str(bad), "-n", "1", "-o", str(tmp_path / "out" / "x.png")] if command == "sample"
            else ["bundle", "--onnx", str(bad), "-o", str(tmp_path / "out")])
    result = subprocess.run([sys.executable, "-c", EMPTIED_ORT, str(folder), *args], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.splitlines() == [
        f"Error: ONNX Runtime is broken here: {folder} holds no onnxruntime package, only what pip left of the folder "
        f"that onnxruntime and onnxruntime-gpu share when one of them was uninstalled; reinstall one: pip uninstall "
        f"-y onnxruntime onnxruntime-gpu && pip install onnxruntime (or onnxruntime-gpu)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.onnx", "site-packages"]


def test_providers_are_for_the_cpu_backend_only(tiny):
    with pytest.raises(ValueError, match="providers apply to backend='onnxruntime'"):
        Pipeline.from_onnx(tiny, backend="ort-cuda", providers=["CPUExecutionProvider"])
    with pytest.raises(ValueError, match="backend='ort-gpu' is not valid"):
        Pipeline.from_onnx(tiny, backend="ort-gpu")  # type: ignore[arg-type]


@pytest.mark.skipif("CUDAExecutionProvider" in HAS, reason="onnxruntime here has the CUDA provider")
def test_sample_cli_exits_2_and_writes_nothing(tiny, tmp_path):
    from ddpm_export.cli import main

    result = CliRunner().invoke(main, ["sample", "--onnx", str(tiny), "--backend", "ort-cuda", "-n", "2",
                                       "-o", str(tmp_path / "g.png"), "--no-progress"])
    assert result.exit_code == 2, result.output
    assert [line for line in result.output.splitlines() if line] == [
        line for line in result.output.splitlines() if line.startswith("Error: backend 'ort-cuda'")]
    assert list(tmp_path.iterdir()) == []
    result = CliRunner().invoke(main, ["sample", "--onnx", str(tiny), "--trt-fp16", "-o", str(tmp_path / "g.png")])
    assert result.exit_code == 2 and "apply to --backend ort-tensorrt" in result.output


@pytest.mark.gpu
@pytest.mark.parametrize("backend", list(ORT_GPU_BACKENDS))
def test_gpu_backend_runs_on_its_provider_and_matches_the_cpu(tiny, tmp_path, backend):
    if ORT_GPU_BACKENDS[backend] not in HAS:
        pytest.skip(f"onnxruntime here ({ort.__version__}) has no {ORT_GPU_BACKENDS[backend]}: "
                    f"install onnxruntime-gpu")
    kwargs = {"trt_cache_dir": tmp_path / "cache"} if backend == "ort-tensorrt" else {}
    gpu = Pipeline.from_onnx(tiny, backend=backend, **kwargs)
    assert gpu.backend.session.get_providers()[0] == ORT_GPU_BACKENDS[backend]
    cpu = Pipeline.from_onnx(tiny)
    a = gpu.sample(4, steps=10, seed=3, progress=False)
    b = cpu.sample(4, steps=10, seed=3, progress=False)
    rel = float(np.linalg.norm(a - b) / np.linalg.norm(b))
    print(f"{backend} vs CPU after 10 DDIM steps: rel L2 {rel:.2e}")
    assert rel < 1e-3  # fp32 graph; TF32 convolutions may be on
    if backend == "ort-tensorrt":
        from ddpm_export.contract.metadata import sha256_file

        assert any((tmp_path / "cache" / sha256_file(tiny)[:16]).iterdir())  # the engine was cached, by the file's hash


@pytest.mark.skipif("CUDAExecutionProvider" in HAS, reason="onnxruntime here has the CUDA provider")
def test_verify_cli_with_a_missing_provider_exits_2(tiny, tmp_path):
    from ddpm_export.cli import main

    report = tmp_path / "r.json"
    result = CliRunner().invoke(main, ["verify", "--model", "tiny", "--onnx", str(tiny), "--backend", "ort-cuda",
                                       "--report", str(report)])
    assert result.exit_code == 2 and "Error: backend 'ort-cuda'" in result.output, result.output
    assert not report.exists()


def test_bundle_takes_the_tensorrt_provider_options_or_refuses_them(tiny, tmp_path):
    """``sample --bundle --backend ort-tensorrt --trt-fp16 --trt-cache`` reaches the provider (it
    was once dropped silently); on another backend the options are refused, by from_bundle and
    from_onnx alike."""
    from ddpm_export.runtime.bundle import make_bundle

    bundle = make_bundle([tiny], tmp_path / "b")
    with pytest.raises(ValueError, match="trt_fp16 and trt_cache_dir apply to backend='ort-tensorrt', not 'onnxruntime'"):
        Pipeline.from_bundle(bundle, trt_fp16=True)
    # from_onnx refuses them too (it once ignored them on the CPU backends)
    for backend in ("onnxruntime", "openvino", "ort-cuda"):
        with pytest.raises(ValueError, match=f"apply to backend='ort-tensorrt', not '{backend}'"):
            Pipeline.from_onnx(tiny, backend=backend, trt_cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()
    if "TensorrtExecutionProvider" in HAS:
        pytest.skip("onnxruntime here has the TensorRT provider; the GPU test covers the options")
    with pytest.raises(ProviderUnavailable):
        Pipeline.from_bundle(bundle, backend="ort-tensorrt", trt_fp16=True, trt_cache_dir=tmp_path / "cache")


def test_trt_fp16_is_read_from_the_session(tiny):
    """``sample --backend ort-tensorrt --trt-fp16`` said "fp32" in its summary and its non-finite
    hint: the backend now reads fp16 from its session's provider options (strings, as ONNX Runtime
    returns them); a CPU session computes the file as it is."""
    from ddpm_export.runtime.backends import describe_precision
    from ddpm_export.runtime.onnxruntime_backend import trt_fp16_enabled

    trt = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert trt_fp16_enabled(trt, {"TensorrtExecutionProvider": {"trt_fp16_enable": "1", "device_id": "0"}})
    assert not trt_fp16_enabled(trt, {"TensorrtExecutionProvider": {"trt_fp16_enable": "0"}})
    assert not trt_fp16_enabled(["CUDAExecutionProvider"], {"TensorrtExecutionProvider": {"trt_fp16_enable": "1"}})
    cpu = Pipeline.from_onnx(tiny).backend
    assert cpu.trt_fp16 is False and describe_precision("fp32", cpu) == "fp32"


@pytest.mark.gpu
def test_ort_tensorrt_fp16_is_reported_as_fp16(tiny, tmp_path):
    if "TensorrtExecutionProvider" not in HAS:
        pytest.skip(f"onnxruntime here ({ort.__version__}) has no TensorrtExecutionProvider: install onnxruntime-gpu")
    from ddpm_export.runtime.backends import describe_precision

    for fp16, said in ((True, "fp32 file computed in fp16"), (False, "fp32")):
        pipe = Pipeline.from_onnx(tiny, backend="ort-tensorrt", trt_fp16=fp16, trt_cache_dir=tmp_path / "cache")
        assert describe_precision(pipe.info.precision, pipe.backend) == said


@pytest.mark.gpu
@pytest.mark.parametrize("backend", list(ORT_GPU_BACKENDS))
def test_a_file_without_its_external_data_is_bad_input_on_the_gpu_too(tiny, tmp_path, backend):
    # create_gpu_session let ONNX Runtime's own exception through ("[ONNXRuntimeError] : 1 : FAIL : External
    # data path validation failed ..."); it shares create_session's wrapping now
    if ORT_GPU_BACKENDS[backend] not in HAS:
        pytest.skip(f"onnxruntime here ({ort.__version__}) has no {ORT_GPU_BACKENDS[backend]}: install onnxruntime-gpu")
    import onnx

    from ddpm_export.errors import BadInputError

    path = tmp_path / "ext.onnx"
    onnx.save_model(onnx.load(str(tiny)), str(path), save_as_external_data=True, location="ext.onnx.data",
                    size_threshold=0)
    (tmp_path / "ext.onnx.data").unlink()
    cache = {"trt_cache_dir": tmp_path / "cache"} if backend == "ort-tensorrt" else {}
    with pytest.raises(BadInputError, match=f"{path}: ONNX Runtime cannot load this file .*external data"):
        Pipeline.from_onnx(path, backend=backend, **cache)
    assert not (tmp_path / "cache").exists()  # the engine cache's folders were made first and left behind
