"""`ddpm-export triton` without a server: every generated config.pbtxt parses with Triton's own
schema (tritonclient's ``model_config_pb2``) for every --unet-backend and every conditioning, the
files land where each backend loads them, and bad arguments are refused naming the flag."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("torch", reason="the export needs torch")
pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="needs the serve extra (tritonclient)")
from google.protobuf import text_format  # noqa: E402

from ddpm_export.cli import main  # noqa: E402
from ddpm_export.contract.sidecar import sidecar_path  # noqa: E402
from ddpm_export.contract.spec import ExportSpec  # noqa: E402
from ddpm_export.errors import BadInputError  # noqa: E402
from ddpm_export.runtime import make_bundle, read_info  # noqa: E402
from ddpm_export.serve import UNET_BACKENDS, write_repository  # noqa: E402
from ddpm_export.serve.configs import sampler_config, unet_config  # noqa: E402
from ddpm_export.serve.pbtxt import Enum, to_pbtxt  # noqa: E402

from runtime_exports import MAX_BATCH, exported  # noqa: E402


def parse(text: str) -> "pb2.ModelConfig":
    return text_format.Parse(text, pb2.ModelConfig())


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny (unconditional) with a stand-in engine: the repository copies it, never loads it."""
    onnx = exported("tiny", tmp_path_factory)
    folder = tmp_path_factory.mktemp("engine")
    plan = folder / "tiny.plan"
    plan.write_bytes(b"not really an engine")
    sha = hashlib.sha256(onnx.read_bytes()).hexdigest()
    sidecar_path(plan).write_text(json.dumps({"onnx_sha256": sha, "tensorrt_version": "10.0.0"}))
    return make_bundle([onnx], folder / "bundle", engines=[plan])


BACKENDS = UNET_BACKENDS.names  # the CLI's --unet-backend choices


def test_an_unknown_backend_is_refused_listing_the_choices(bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="unet_backend='triton'.*'onnxruntime', 'tensorrt', 'openvino', 'python'"):
        write_repository(bundle, tmp_path / "repo", unet_backend="triton")  # type: ignore[arg-type]
    assert not (tmp_path / "repo").exists()


# ids "onnxruntime-unet", ...: a bare "tensorrt" id would read as the tensorrt marker (conftest.py)
@pytest.mark.parametrize("flag, value, field, limits", [
    ("--instances", "100000000000000000000", "instances", "[1, 1024]"),  # Triton's count is an int32
    ("--max-queue-delay-us", "99999999999999999999999", "max_queue_delay_us", "[0, 10000000]"),  # a uint64
    ("--max-images", "70000", "max_images", "[1, 65536]"),
    ("--max-image-steps", "6553600001", "max_image_steps", "[1, 6553600000]"),  # 65536 images x the most T
])
def test_settings_past_what_triton_reads_are_refused(bundle: Path, tmp_path: Path, flag: str, value: str,
                                                     field: str, limits: str) -> None:
    # they were written into config.pbtxt, which the server then could not load
    result = CliRunner().invoke(main, ["triton", "--bundle", str(bundle), "-o", str(tmp_path / "r"), flag, value])
    assert result.exit_code == 2 and flag in result.output and "Invalid value" in result.output, result.output
    assert not (tmp_path / "r").exists()
    with pytest.raises(BadInputError, match=re.escape(f"{field} must be an int in {limits}, got {int(value)}")):
        write_repository(bundle, tmp_path / "r", **{field: int(value)})


@pytest.mark.parametrize("backend", BACKENDS, ids=[f"{b}-unet" for b in BACKENDS])
def test_every_config_parses_and_matches_the_export_spec(bundle: Path, tmp_path: Path, backend: str) -> None:
    result = CliRunner().invoke(main, ["triton", "--bundle", str(bundle), "-o", str(tmp_path / "repo"),
                                       "--unet-backend", backend, "--instances", "3"])
    assert result.exit_code == 0, result.output
    repo = tmp_path / "repo"
    spec = read_info(bundle / "tiny.onnx").spec
    unet = parse((repo / "unet" / "config.pbtxt").read_text())
    target = UNET_BACKENDS[backend]
    assert (unet.platform if target.field == "platform" else unet.backend) == target.value
    assert unet.max_batch_size == spec.max_batch == MAX_BATCH
    assert [i.name for i in unet.input] == spec.input_names == ["x_t", "t"]
    assert list(unet.input[0].dims) == [spec.in_channels, spec.sample_size, spec.sample_size]
    assert unet.input[0].data_type == pb2.TYPE_FP32 and unet.input[1].data_type == pb2.TYPE_INT64
    assert list(unet.input[1].dims) == [1] and unet.input[1].HasField("reshape") and not unet.input[1].reshape.shape
    assert [o.name for o in unet.output] == ["model_output"]
    assert list(unet.output[0].dims) == [spec.out_channels, spec.sample_size, spec.sample_size]
    assert list(unet.dynamic_batching.preferred_batch_size) == sorted({spec.opt_batch, spec.max_batch})
    assert (repo / "unet" / "1" / target.filename).is_file()
    assert (repo / "unet" / "1" / "model.py").is_file() == (backend == "python")

    sampler = parse((repo / "sampler" / "config.pbtxt").read_text())
    assert sampler.backend == "python" and sampler.max_batch_size == 0
    assert [(i.name, i.optional) for i in sampler.input] == [
        ("seed", False), ("num_images", False), ("steps", False), ("sampler", True), ("eta", True),
        ("guidance_scale", True)]  # tiny is unconditional: no class_labels
    assert [i.data_type for i in sampler.input] == [pb2.TYPE_INT64] * 3 + [pb2.TYPE_STRING, pb2.TYPE_FP32, pb2.TYPE_FP32]
    assert [(o.name, list(o.dims)) for o in sampler.output] == [("images", [-1, *unet.input[0].dims])]
    assert [(g.count, g.kind) for g in sampler.instance_group] == [(3, pb2.ModelInstanceGroup.KIND_CPU)]
    assert sampler.parameters["unet_model"].string_value == "unet"
    assert sampler.parameters["max_images_per_request"].string_value == "1024"
    assert sampler.parameters["max_image_steps_per_request"].string_value == "16384"
    info = json.loads((repo / "sampler" / "1" / "model_info.json").read_text())
    assert info == json.loads((bundle / "manifest.json").read_text())["models"][0]["metadata"]


def test_the_sampler_refuses_a_model_info_with_a_key_given_twice(bundle: Path, tmp_path: Path) -> None:
    """The sampler model's metadata file: json kept the last of two keys silently."""
    from ddpm_export.errors import IntegrityError
    from ddpm_export.serve.triton_models import _read_info

    path = write_repository(bundle, tmp_path / "repo", unet_backend="onnxruntime") / "sampler" / "1" / "model_info.json"
    assert _read_info(path) == json.loads(path.read_text())
    path.write_text(path.read_text().rstrip()[:-1] + ', "ddpm_export.attention": "decomposed"}')
    with pytest.raises(IntegrityError, match=r"model_info.json: not readable JSON \(key 'ddpm_export.attention' is "
                                             r"given twice\); regenerate the repository with `ddpm-export triton`"):
        _read_info(path)


def test_the_request_limits_are_written_for_the_sampler(bundle: Path, tmp_path: Path) -> None:
    """--max-image-steps bounds num_images x steps of one request (its time); it reaches the sampler
    as max_images reaches it, through its config.pbtxt parameters."""
    result = CliRunner().invoke(main, ["triton", "--bundle", str(bundle), "-o", str(tmp_path / "repo"),
                                       "--max-images", "12", "--max-image-steps", "345"])
    assert result.exit_code == 0, result.output
    sampler = parse((tmp_path / "repo" / "sampler" / "config.pbtxt").read_text())
    assert sampler.parameters["max_images_per_request"].string_value == "12"
    assert sampler.parameters["max_image_steps_per_request"].string_value == "345"


def test_tensorrt_serves_the_bundled_engine(bundle: Path, tmp_path: Path) -> None:
    repo = write_repository(bundle, tmp_path / "repo", unet_backend="tensorrt")
    assert (repo / "unet" / "1" / "model.plan").read_bytes() == (bundle / "tiny.plan").read_bytes()


@pytest.mark.parametrize("spec", [
    ExportSpec(in_channels=1, out_channels=1, sample_size=16, cond_kind="class", num_class_rows=11,
               min_batch=1, opt_batch=2, max_batch=8),
    ExportSpec(cond_kind="context", context_dim=24, min_batch=2, opt_batch=16, max_batch=16),
], ids=["class", "context"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_conditioned_models_configs_parse(spec: ExportSpec, backend: str) -> None:
    unet = parse(to_pbtxt(unet_config(spec, backend, max_queue_delay_us=100, threads=None)))
    assert [i.name for i in unet.input] == spec.input_names
    cond = unet.input[2]
    if spec.cond_kind == "class":
        assert cond.data_type == pb2.TYPE_INT64 and list(cond.dims) == [1] and cond.HasField("reshape")
    else:
        assert cond.data_type == pb2.TYPE_FP32 and list(cond.dims) == [-1, 24]
    assert list(unet.dynamic_batching.preferred_batch_size) == sorted({spec.opt_batch, spec.max_batch})
    assert unet.dynamic_batching.max_queue_delay_microseconds == 100
    sampler = parse(to_pbtxt(sampler_config(spec, instances=2, max_images=64, max_image_steps=640)))
    last = sampler.input[-1]
    if spec.cond_kind == "class":
        assert (last.name, list(last.dims), last.optional) == ("class_labels", [-1], True)
    else:
        assert (last.name, list(last.dims), last.optional) == ("context", [-1, -1, 24], False)


@pytest.mark.parametrize("backend", BACKENDS, ids=[f"{b}-unet" for b in BACKENDS])
def test_the_openvino_unet_pads_every_call_to_max_batch(backend: str) -> None:
    """Triton's OpenVINO backend fixes the model's batch at max_batch_size and refuses any other
    ("expected requests with batch size '16', got '4'") unless ENABLE_BATCH_PADDING is YES: every
    sampler request of fewer images than max_batch failed. The others run any batch as it is."""
    spec = ExportSpec(in_channels=1, out_channels=1, sample_size=16, min_batch=1, opt_batch=4, max_batch=16)
    unet = parse(to_pbtxt(unet_config(spec, backend, max_queue_delay_us=500, threads=None)))
    parameters = {key: value.string_value for key, value in unet.parameters.items()}
    assert parameters == ({"ENABLE_BATCH_PADDING": "YES"} if backend == "openvino" else {})


#: the key each backend reads its CPU thread count from (Triton's ONNX Runtime and OpenVINO backends' own)
THREAD_KEYS = {"onnxruntime": "intra_op_thread_count", "openvino": "INFERENCE_NUM_THREADS",
               "python": "intra_op_thread_count"}


@pytest.mark.parametrize("backend", list(THREAD_KEYS), ids=[f"{b}-unet" for b in THREAD_KEYS])
def test_ddpm_export_threads_reaches_the_unets_config(bundle: Path, tmp_path: Path, backend: str) -> None:
    """`ddpm-export --threads 3 triton` was ignored: the served U-Net ran the engine's default.
    It is now the unet's thread parameter; without --threads there is none (the engine's default)."""
    for threads, want in ((["--threads", "3"], {THREAD_KEYS[backend]: "3"}), ([], {})):
        out = tmp_path / f"repo{len(threads)}"
        result = CliRunner().invoke(main, [*threads, "triton", "--bundle", str(bundle), "-o", str(out),
                                           "--unet-backend", backend])
        assert result.exit_code == 0, result.output
        unet = parse((out / "unet" / "config.pbtxt").read_text())
        parameters = {key: value.string_value for key, value in unet.parameters.items()}
        assert {k: v for k, v in parameters.items() if k != "ENABLE_BATCH_PADDING"} == want


def test_the_python_unets_session_takes_pipelines_default_threads(bundle: Path, tmp_path: Path) -> None:
    """Without `ddpm-export --threads` the python unet's session ran ONNX Runtime's default (one
    thread per core, intra_op_num_threads 0) where Pipeline / sample run a file under 16 MiB on one
    thread: served and CLI figures differed. The session is made from Triton's args as the stub
    passes them (the config as JSON, the unet's folder and version)."""
    from google.protobuf import json_format

    from ddpm_export.runtime.backends import SMALL_MODEL_BYTES
    from ddpm_export.serve.triton_models import unet_session

    for threads, want in ((["--threads", "3"], 3), ([], 1)):
        out = tmp_path / f"repo{len(threads)}"
        result = CliRunner().invoke(main, [*threads, "triton", "--bundle", str(bundle), "-o", str(out),
                                           "--unet-backend", "python"])
        assert result.exit_code == 0, result.output
        config = parse((out / "unet" / "config.pbtxt").read_text())
        args = {"model_repository": str(out / "unet"), "model_version": "1",
                "model_config": json_format.MessageToJson(config, preserving_proto_field_name=True)}
        assert (out / "unet" / "1" / "model.onnx").stat().st_size < SMALL_MODEL_BYTES  # tiny: Pipeline's 1
        options = unet_session(args).get_session_options()
        assert (options.intra_op_num_threads, options.inter_op_num_threads) == (want, 1)


def test_ddpm_export_threads_is_refused_for_a_tensorrt_unet(bundle: Path, tmp_path: Path) -> None:
    """A TensorRT engine runs on the GPU: a thread count would be ignored without a word."""
    result = CliRunner().invoke(main, ["--threads", "2", "triton", "--bundle", str(bundle), "-o", str(tmp_path / "r"),
                                       "--unet-backend", "tensorrt"])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert ("threads=2 (--threads): a tensorrt unet runs on the GPU and takes no CPU thread count; it applies to "
            "--unet-backend onnxruntime, openvino, python") in " ".join(result.output.split())
    assert not (tmp_path / "r").exists()
    with pytest.raises(BadInputError, match=r"threads must be an int in \[1, 1024\], got 0"):
        write_repository(bundle, tmp_path / "r", threads=0)
    assert not (tmp_path / "r").exists()


def test_pbtxt_writer_round_trips_through_protobuf() -> None:
    text = to_pbtxt({"name": 'a "quoted" \\ name', "max_batch_size": 4,
                     "input": [{"name": "x", "data_type": Enum("TYPE_FP16"), "dims": [-1, 3]}],
                     "dynamic_batching": {"preferred_batch_size": [], "max_queue_delay_microseconds": 0},
                     "parameters": [{"key": "k", "value": {"string_value": "v"}}]})
    config = parse(text)
    assert config.name == 'a "quoted" \\ name' and config.max_batch_size == 4
    assert config.input[0].data_type == pb2.TYPE_FP16 and list(config.input[0].dims) == [-1, 3]
    assert config.parameters["k"].string_value == "v"
    with pytest.raises(ValueError, match="name"):
        to_pbtxt({"name": "two\nlines"})
    with pytest.raises(TypeError, match="dims"):
        to_pbtxt({"dims": [np.int64(3)]})


def test_tensorrt_without_an_engine_is_refused_naming_the_fix(bundle: Path, tmp_path: Path) -> None:
    plain = make_bundle([bundle / "tiny.onnx"], tmp_path / "plain")
    result = CliRunner().invoke(main, ["triton", "--bundle", str(plain), "-o", str(tmp_path / "repo"),
                                       "--unet-backend", "tensorrt"])
    assert result.exit_code == 2
    assert "no TensorRT engine" in result.output and "ddpm-export bundle --engine" in result.output
    assert not (tmp_path / "repo").exists()


def test_a_bundle_file_is_picked_by_either_spelling(bundle: Path, tmp_path: Path) -> None:
    """`sample` picks a bundle's file with --bundle-onnx, `triton` with --onnx: both take both."""
    for flag in ("--onnx", "--bundle-onnx"):
        out = tmp_path / flag.strip("-")
        result = CliRunner().invoke(main, ["triton", "--bundle", str(bundle), flag, "tiny.onnx", "-o", str(out)])
        assert result.exit_code == 0, result.output
    wrong = CliRunner().invoke(main, ["triton", "--bundle", str(bundle), "--bundle-onnx", "x.onnx", "-o",
                                      str(tmp_path / "r")])
    assert wrong.exit_code == 2 and "no ONNX file 'x.onnx' in this bundle" in wrong.output


def test_an_existing_repository_needs_force(bundle: Path, tmp_path: Path) -> None:
    args = ["triton", "--bundle", str(bundle), "-o", str(tmp_path / "repo"), "--unet-backend", "python"]
    assert CliRunner().invoke(main, args).exit_code == 0
    (tmp_path / "repo" / "unet" / "stale.txt").write_text("old")
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "--force" in result.output
    assert (tmp_path / "repo" / "unet" / "stale.txt").is_file()
    (tmp_path / "repo" / "mymodel").mkdir()  # another model of the user's: --force would delete it
    result = CliRunner().invoke(main, [*args, "--force"])
    assert result.exit_code == 2 and "holds mymodel besides what this command writes" in result.output
    (tmp_path / "repo" / "mymodel").rmdir()
    assert CliRunner().invoke(main, [*args, "--force"]).exit_code == 0
    assert not (tmp_path / "repo" / "unet" / "stale.txt").exists()  # our models are replaced whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]  # no temporary folder left behind


def test_a_tampered_bundle_is_refused(bundle: Path, tmp_path: Path) -> None:
    copy = make_bundle([bundle / "tiny.onnx"], tmp_path / "copy")
    data = bytearray((copy / "tiny.onnx").read_bytes())
    data[-1] ^= 1
    (copy / "tiny.onnx").write_bytes(bytes(data))
    result = CliRunner().invoke(main, ["triton", "--bundle", str(copy), "-o", str(tmp_path / "repo")])
    assert result.exit_code == 2 and "tiny.onnx" in result.output and "sha256" in result.output


def test_a_folder_that_is_no_bundle_is_named_as_such(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--bundle . -o repo` said the repository would be inside the bundle, not that . is no bundle."""
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["triton", "--bundle", ".", "-o", "repo"])
    assert result.exit_code == 2 and "manifest.json" in result.output, result.output
    assert "inside the bundle" not in result.output and not (tmp_path / "repo").exists()


def test_openvino_unet_backend_refuses_an_ort_mha_file(tmp_path):
    """A contrib op (com.microsoft.MultiHeadAttention) is refused for Triton's OpenVINO backend,
    whose OpenVINO release is the server's; the message says how to export instead."""
    from ddpm_export.export.onnx import export_onnx
    from ddpm_export.runtime.bundle import BundleError

    onnx = export_onnx("tiny", tmp_path / "mha.onnx", attention="ort-mha", validate=False, log=lambda line: None).path
    bundle = make_bundle([onnx], tmp_path / "b")
    with pytest.raises(BundleError, match="com.microsoft.MultiHeadAttention.*--attention decomposed"):
        write_repository(bundle, tmp_path / "repo", unet_backend="openvino")
    assert not (tmp_path / "repo").exists()
    write_repository(bundle, tmp_path / "repo", unet_backend="onnxruntime")  # ONNX Runtime serves it


def test_openvino_unet_backend_refuses_a_context_conditioned_model(tmp_path: Path) -> None:
    """Triton's OpenVINO backend pads a call to max_batch into the buffers its infer request holds,
    never setting their shapes: the context's is [max_batch, 0, D] (its length is dynamic), so a
    context-conditioned unet could not be served. Refused naming the input and the other backends;
    nothing is written, and ONNX Runtime still serves it."""
    from export_helpers import save_test_checkpoint

    from ddpm_export.export.onnx import export_onnx

    onnx = export_onnx(save_test_checkpoint("context", tmp_path), tmp_path / "ctx.onnx", max_batch=2,
                       validate=False, log=lambda line: None).path
    bundle = make_bundle([onnx], tmp_path / "b")
    result = CliRunner().invoke(main, ["triton", "--bundle", str(bundle), "-o", str(tmp_path / "repo"),
                                       "--unet-backend", "openvino"])
    assert result.exit_code == 2, result.output
    assert re.search(r"ctx\.onnx takes inputs whose size varies beyond the batch \(context axis 1 "
                     r"\(context_length\)\), which Triton's OpenVINO backend cannot serve.*choose --unet-backend "
                     r"onnxruntime, tensorrt or python", " ".join(result.output.split())), result.output
    assert not (tmp_path / "repo").exists()
    write_repository(bundle, tmp_path / "repo", unet_backend="onnxruntime")


@pytest.mark.parametrize("name", ["with space", "ünïcode"])
def test_the_local_server_refuses_paths_its_python_backend_cannot_run_from(tmp_path: Path, name: str) -> None:
    """A space split the stub's path (a 60 s hang), non-ASCII failed its encoding: named up front."""
    from ddpm_export.serve.local_server import LocalServer

    with pytest.raises(ValueError, match="Triton's Python backend cannot run from a path with spaces or non-ASCII"):
        LocalServer(None, tmp_path / name, tmp_path / "work")  # type: ignore[arg-type]


@pytest.mark.parametrize("inside", ["cwd", "backends", "cwd/repo"])
def test_the_local_server_refuses_a_repository_in_the_folders_it_rewrites(tmp_path: Path, inside: str) -> None:
    """work/cwd is emptied on every start: a repository there was deleted (the server then found no model)."""
    from ddpm_export.serve.local_server import LocalServer, TritonInstall

    repo = tmp_path / "work" / inside
    (repo / "sampler").mkdir(parents=True)
    install = TritonInstall(*(tmp_path / name for name in ("bin", "backend", "stub", "libs")))  # never run
    with pytest.raises(ValueError, match=rf"repository {re.escape(str(repo))} is in .*work/{inside.split('/')[0]}, "
                                         r"which LocalServer empties and refills on every start"):
        LocalServer(install, repo, tmp_path / "work")
    assert (repo / "sampler").is_dir()
    LocalServer(install, tmp_path / "work" / "repo", tmp_path / "work")  # beside them: fine (tools/triton_bench.py)
