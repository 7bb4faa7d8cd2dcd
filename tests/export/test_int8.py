"""``ddpm-export onnx --precision int8``: a QDQ file calibrated on the sampler's trajectories, with
the embedding island, the first and last convolution and attention kept in float; it samples
through the same Pipeline in ONNX Runtime and OpenVINO and verifies with the int8 thresholds."""

from __future__ import annotations

import importlib.util
import json
import re
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

pytest.importorskip("torch", reason="the export needs torch")
onnx = pytest.importorskip("onnx")

from click.testing import CliRunner  # noqa: E402

from ddpm_export.cli import main  # noqa: E402
from ddpm_export.contract import metadata as md  # noqa: E402
from ddpm_export.errors import BadInputError, TargetMismatchWarning  # noqa: E402
from ddpm_export.export.int8 import CalibrationConfig, float_nodes, record_calibration_inputs  # noqa: E402
from ddpm_export.export.onnx import export_onnx  # noqa: E402
from ddpm_export.metrics import INT8_REL_L2, errors  # noqa: E402
from ddpm_export.runtime import Pipeline, read_info  # noqa: E402

HAS_OPENVINO = importlib.util.find_spec("openvino") is not None


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("int8")
    files = {p: export_onnx("kitchen-sink", folder / f"sink-{p}.onnx", precision=p, max_batch=8,
                            log=lambda s: None).path for p in ("fp32", "int8")}
    files["int8-openvino"] = export_onnx("kitchen-sink", folder / "sink-int8-ov.onnx", precision="int8", max_batch=8,
                                         target="openvino", log=lambda s: None).path
    return files


def _quantized_outputs(model: onnx.ModelProto) -> tuple[int, int]:
    """(quantized ops whose output is quantized for a float consumer, quantized ops): a quantized op
    is a Conv/MatMul/Gemm reading a dequantized tensor; an output quantized only because the next
    op is a quantized op too (a conv feeding a conv) is that op's input quantization, not counted."""
    nodes = model.graph.node
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in nodes:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    dq = {o for n in nodes if n.op_type == "DequantizeLinear" for o in n.output}
    ops = [n for n in nodes if n.op_type in ("Conv", "MatMul", "Gemm") and any(i in dq for i in n.input)]
    quantized_ops = {id(n) for n in ops}

    def feeds_float(op: onnx.NodeProto) -> bool:
        for q in (r for r in readers.get(op.output[0], []) if r.op_type == "QuantizeLinear"):
            for d in readers.get(q.output[0], []):
                if any(id(r) not in quantized_ops for r in readers.get(d.output[0], [])):
                    return True
        return False
    return sum(feeds_float(n) for n in ops), len(ops)


@pytest.mark.parametrize("field,value,message", [
    ("trajectories", 0, "trajectories: must be >= 1, got 0"),  # was ONNX Runtime's "No data is collected."
    ("steps", 0, "steps: must be >= 1, got 0"),  # was "num_inference_steps: must be in [1, ...]"
    ("images", 0, "images: must be >= 1, got 0"),  # was "shape must be (B, C, H, W) ..."
    ("seed", -1, "seed: must be >= 0, got -1"),
    ("guidance_scale", float("nan"), "guidance_scale=nan must be finite"),  # was accepted
    ("float_groups", ("embedding", "attn"), "float_groups='attn' is not valid; choose one of: 'embedding', "
                                            "'first_last_conv', 'attention'"),
])
def test_a_bad_calibration_setting_is_refused_when_made_naming_its_field(field: str, value: object,
                                                                        message: str) -> None:
    """Refused where it is made, before a trace and a calibration run (a bad field failed only
    after both, under another name); and it round-trips through JSON like every config."""
    from ddpm_export.configbase import ConfigError

    with pytest.raises(ConfigError, match="^" + message.replace("[", r"\[").replace("(", r"\(") + "$"):
        CalibrationConfig(**{field: value})
    cfg = CalibrationConfig(trajectories=2, float_groups=("embedding",))
    assert CalibrationConfig.from_json(cfg.to_json()) == cfg


def test_calibration_follows_the_sampler_over_classes_and_the_null_class() -> None:
    from ddpm_export import load_model
    from ddpm_export.diffusion import DiffusionConfig
    from ddpm_export.contract.spec import ExportSpec
    from ddpm_export.torch_backend import TorchBackend

    unet = load_model("kitchen-sink")
    spec = ExportSpec.from_config(unet.config, max_batch=32)
    cfg = CalibrationConfig(trajectories=2, steps=3)
    calls = record_calibration_inputs(TorchBackend(unet), spec, DiffusionConfig(), unet.config.num_classes,
                                      unet.config.num_classes, cfg)
    assert len(calls) == 3 + 4  # one call per step of each trajectory (3 and 4 steps)
    ts = {int(t) for c in calls for t in c["t"]}
    assert ts == {0, 250, 500, 750, 333, 666}  # the two trajectories' timesteps interleave (both end at t = 0)
    classes = {int(c) for call in calls for c in call["class_labels"]}
    assert classes == set(range(unet.config.num_classes + 1))  # every class and the null class


@pytest.mark.parametrize("offset", [0, 1])
def test_calibration_of_a_model_trained_with_fewer_timesteps_than_its_steps(offset: int) -> None:
    """T = 10: the 16-step calibration run failed the export with 'num_inference_steps: must be in
    [1, num_train_timesteps=10], got 16', a setting the user never made; it now runs T steps (less
    a leading steps_offset, which would push the first timestep to T)."""
    from ddpm_export import load_model
    from ddpm_export.contract.spec import ExportSpec
    from ddpm_export.diffusion import DiffusionConfig
    from ddpm_export.torch_backend import TorchBackend

    unet = load_model("tiny")
    spec = ExportSpec.from_config(unet.config, max_batch=4)
    diffusion = DiffusionConfig(num_train_timesteps=10, num_inference_steps=5, steps_offset=offset)
    calls = record_calibration_inputs(TorchBackend(unet), spec, diffusion, None, None,
                                      CalibrationConfig(trajectories=2, steps=16))
    assert [sorted({int(t) for t in c["t"]}) for c in calls] == 2 * [[t] for t in range(9, offset - 1, -1)]


def test_calibration_splits_guided_calls_at_max_batch_keeping_the_null_class() -> None:
    """At --max-batch 16 the digits model's 10 class rows and 10 null rows (20) did not fit, and the
    calibration ran unguided: the null class was never calibrated. Now each call is split."""
    from ddpm_export import load_model
    from ddpm_export.diffusion import DiffusionConfig
    from ddpm_export.contract.spec import ExportSpec
    from ddpm_export.torch_backend import TorchBackend

    unet = load_model("kitchen-sink")
    cfg = CalibrationConfig(trajectories=1, steps=2)  # 10 class rows + 10 null rows per call, as digits
    spec, wide = (ExportSpec.from_config(unet.config, opt_batch=1, max_batch=b) for b in (16, 32))
    args = (DiffusionConfig(), unet.config.num_classes, unet.config.num_classes, cfg)
    split, whole = (record_calibration_inputs(TorchBackend(unet), s, *args) for s in (spec, wide))
    assert [len(f["x_t"]) for f in split] == [16, 4, 16, 4] and [len(f["x_t"]) for f in whole] == [20, 20]
    for key in whole[0]:  # the same rows, in order: min/max calibration sees the same values
        np.testing.assert_allclose(np.concatenate([f[key] for f in split[:2]]), whole[0][key], rtol=1e-5, atol=1e-6)
    assert unet.config.num_classes in {int(c) for f in split for c in f["class_labels"]}  # the null class


def test_calibration_runs_at_most_max_calibration_images() -> None:
    """The images of a run were the class count uncapped once guided calls were split: a
    1000-class model would run 2000-row forwards. Here images=40 on an unconditional model."""
    from ddpm_export import load_model
    from ddpm_export.contract.spec import ExportSpec
    from ddpm_export.diffusion import DiffusionConfig
    from ddpm_export.export.int8 import MAX_CALIBRATION_IMAGES
    from ddpm_export.torch_backend import TorchBackend

    unet = load_model("tiny")
    spec = ExportSpec.from_config(unet.config, opt_batch=1, max_batch=16)
    calls = record_calibration_inputs(TorchBackend(unet), spec, DiffusionConfig(), None, None,
                                      CalibrationConfig(trajectories=1, steps=2, images=40))
    assert [len(f["x_t"]) for f in calls] == [16, 16, 16, 16] and MAX_CALIBRATION_IMAGES == 32


def test_int8_file_is_qdq_with_the_float_islands(files: dict[str, Path]) -> None:
    model = onnx.load(str(files["int8"]))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") > 10 and ops.count("DequantizeLinear") > 10
    info = read_info(files["int8"])
    assert info.precision == "int8" and info.unet == read_info(files["fp32"]).unet
    fp32 = onnx.load(str(files["fp32"]))
    kept = float_nodes(fp32, ("embedding", "first_last_conv", "attention"))
    convs = [n.name for n in fp32.graph.node if n.op_type == "Conv"]
    assert convs[0] in kept and convs[-1] in kept and any("/cond/" in k or "embedding" in k for k in kept)
    produced_by_dq = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    by_name = {n.name: n for n in model.graph.node}
    for name in kept:  # kept nodes read no dequantized tensor
        assert not any(i in produced_by_dq for i in by_name[name].input), name
    quantized = [n for n in model.graph.node if n.op_type == "Conv" and n.name not in kept]
    assert quantized and all(any(i in produced_by_dq for i in n.input) for n in quantized)
    # auto rewrites for int8: the upsampling convs as 2 x 2 phase convs (quantized above) + DepthToSpace
    assert info.rewrites == ("upsample-subpixel",)  # kitchen-sink's attention has several heads: no fold
    assert ops.count("DepthToSpace") >= 1 and "Resize" not in ops


def test_the_openvino_target_leaves_the_quantized_ops_outputs_float(files: dict[str, Path]) -> None:
    """--target openvino: the same quantized inputs and weights, no QuantizeLinear on the outputs of
    the int8 ops (ONNX Runtime needs them to fuse QLinearConv; OpenVINO is faster without)."""
    quantized, total = _quantized_outputs(onnx.load(str(files["int8"])))
    assert total > 10 and quantized > total // 2  # any target: outputs quantized (for ONNX Runtime's QLinear ops)
    quantized_ov, total_ov = _quantized_outputs(onnx.load(str(files["int8-openvino"])))
    assert total_ov == total and quantized_ov == 0
    info = read_info(files["int8-openvino"])
    assert info.target == "openvino" and read_info(files["int8"]).target == "any"
    assert '"quantized_outputs":false' in info.metadata["ddpm_export.precision_policy"]
    # what the runtime reads back (an int8 file written before the key existed quantized its outputs)
    assert md.quantized_outputs_of(info.metadata) is False
    assert md.quantized_outputs_of(read_info(files["int8"]).metadata) is True
    assert md.quantized_outputs_of(read_info(files["fp32"]).metadata) is True
    old_policy = {k: v for k, v in json.loads(info.metadata[md.PRECISION_POLICY]).items() if k != "quantized_outputs"}
    assert md.quantized_outputs_of({**info.metadata, md.PRECISION_POLICY: json.dumps(old_policy)}) is True


def _zero_points(path: Path) -> list:
    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    return [inits[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]


def test_int8_for_tensorrt_quantizes_activations_symmetric_signed(files: dict[str, Path], tmp_path: Path) -> None:
    """TensorRT takes only symmetric signed INT8 ("Working with Quantized Types"): every zero point
    of the --target tensorrt file is an int8 0; the other targets keep asymmetric uint8."""
    out = export_onnx("tiny", tmp_path / "t8.onnx", precision="int8", target="tensorrt", max_batch=4,
                      validate=False, calibration=CalibrationConfig(trajectories=1, steps=4), log=lambda s: None).path
    points = _zero_points(out)
    assert len(points) > 10
    assert {p.data_type for p in points} == {onnx.TensorProto.INT8}
    assert json.loads(read_info(out).metadata[md.PRECISION_POLICY])["activation_dtype"] == "int8 (zero point 0)"
    # TensorRT's parser refuses DequantizeLinear of an int32 tensor ("only activation types allowed as input to
    # this layer"): the quantizer's int32 biases made every such file unbuildable; they stay float there
    model = onnx.load(str(out))
    inits = {i.name: i.data_type for i in model.graph.initializer}
    dq_inputs = [inits.get(n.input[0]) for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert onnx.TensorProto.INT8 in dq_inputs and onnx.TensorProto.INT32 not in dq_inputs
    biases = [n.input[2] for n in model.graph.node if n.op_type == "Conv" and len(n.input) > 2]
    assert biases and all(inits.get(b) == onnx.TensorProto.FLOAT for b in biases)
    other = onnx.load(str(files["int8"]))  # --target any: int32 biases (ONNX Runtime, OpenVINO take them)
    other_inits = {i.name: i.data_type for i in other.graph.initializer}
    assert onnx.TensorProto.INT32 in [other_inits.get(n.input[0]) for n in other.graph.node
                                      if n.op_type == "DequantizeLinear"]
    assert all(not onnx.numpy_helper.to_array(p).any() for p in points)
    assert {p.data_type for p in _zero_points(files["int8"])} == {onnx.TensorProto.UINT8}  # --target any
    from ddpm_export.export.tensorrt import plan_engine

    assert plan_engine(out).precision == "int8"
    # such a file from an earlier ddpm-export (int32 biases) is refused before a build
    conv = next(n for n in model.graph.node if n.op_type == "Conv" and len(n.input) > 2)
    bias = onnx.numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == conv.input[2]))
    model.graph.initializer.extend([onnx.numpy_helper.from_array(np.round(bias / 1e-4).astype(np.int32), "b_q"),
                                    onnx.numpy_helper.from_array(np.array(1e-4, np.float32), "b_scale")])
    model.graph.node.insert(0, onnx.helper.make_node("DequantizeLinear", ["b_q", "b_scale"], ["b_deq"]))
    conv.input[2] = "b_deq"
    old = tmp_path / "t8-int32-bias.onnx"
    onnx.save(model, str(old))
    with pytest.raises(BadInputError, match=r"t8-int32-bias\.onnx stores its biases as int32 behind "
                                            r"DequantizeLinear.*--precision int8 --target tensorrt`$"):
        plan_engine(old)


@pytest.mark.parametrize("which,target", [("int8", "any"), ("int8-openvino", "openvino")])
def test_tensorrt_refuses_an_int8_file_with_uint8_activations(files: dict[str, Path], which: str, target: str) -> None:
    """TensorRT's parser rejects a nonzero zero point; a file for another --target has uint8 ones: refused
    up front, naming the export that fits (it failed on the GPU with a parser assertion and a hint to
    check the TensorRT version)."""
    from ddpm_export.export.tensorrt import plan_engine

    with pytest.raises(BadInputError, match=rf"exported for --target {target}: its activations are quantized as "
                                            r"asymmetric uint8.*--precision int8 --target tensorrt`$"):
        plan_engine(files[which])


def test_tensorrt_refuses_fp16_for_an_int8_file(files: dict[str, Path]) -> None:
    """A strongly typed build takes the precision from the graph: --fp16 would be ignored, so it is refused."""
    from ddpm_export.export.tensorrt import plan_engine

    with pytest.raises(BadInputError, match=r"sink-int8\.onnx is an int8 \(QDQ\) graph; --fp16 applies to fp32"):
        plan_engine(files["int8"], fp16=True)


def test_tensorrt_refuses_fp32_for_an_int8_file(files: dict[str, Path]) -> None:
    """--fp32 on an int8 file built an int8 engine (the graph's precision) as if fp32 had been given."""
    from ddpm_export.export.tensorrt import plan_engine

    with pytest.raises(BadInputError, match=r"sink-int8\.onnx is an int8 graph but fp32 was asked for.*"
                                            r"--precision fp32`, or build this one without --fp32$"):
        plan_engine(files["int8"], fp16=False)


@pytest.mark.parametrize("backend,which", [("onnxruntime", "int8"), ("openvino", "int8"),
                                           ("openvino", "int8-openvino")])
def test_int8_samples_through_the_pipeline(files: dict[str, Path], backend: str, which: str) -> None:
    if backend == "openvino" and not HAS_OPENVINO:
        pytest.skip("openvino is not installed (pip install 'ddpm-export[openvino]')")
    kwargs = {"inference_precision": "f32"} if backend == "openvino" else {}
    int8 = Pipeline.from_onnx(files[which], backend=backend, threads=1, **kwargs)
    fp32 = Pipeline.from_onnx(files["fp32"], threads=1)
    feeds = int8.info.spec.sample_inputs(4, seed=1)
    got, want = (p.backend(feeds["x_t"], feeds["t"], feeds["class_labels"]) for p in (int8, fp32))
    assert 0 < errors(got, want)[1] <= INT8_REL_L2  # quantized (not equal), within the int8 limit
    x = int8.sample(4, steps=3, guidance_scale=1.5, progress=False)
    assert x.shape == (4, *int8.image_shape) and np.isfinite(x).all()


def test_an_openvino_int8_file_on_onnx_runtime_warns_once_and_still_samples(files: dict[str, Path], tmp_path: Path,
                                                                           recwarn: pytest.WarningsRecorder) -> None:
    """ONNX Runtime runs the int8 ops of a --target openvino file in float (0.34-0.38x on
    ddpm-cifar10): the library warns with the fix; every fitting pair loads silently."""
    with pytest.warns(TargetMismatchWarning, match=r"--target openvino.*export with --target onnxruntime \(or any\)"):
        Pipeline.from_onnx(files["int8-openvino"], threads=1)
    recwarn.clear()
    Pipeline.from_onnx(files["int8"], threads=1)  # target any
    Pipeline.from_onnx(files["fp32"], threads=1)
    if HAS_OPENVINO:
        Pipeline.from_onnx(files["int8-openvino"], backend="openvino", threads=1, inference_precision="f32")
    assert not [w for w in recwarn if issubclass(w.category, TargetMismatchWarning)]
    # the CLI: one "Warning:" line on stderr, the samples written all the same; nothing under -q
    args = ["sample", "--onnx", str(files["int8-openvino"]), "-n", "1", "--steps", "2", "--no-progress"]
    loud = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "a.png")])
    assert loud.exit_code == 0, loud.output
    assert loud.stderr.count("Warning: ") == 1 and "exported with --target openvino" in loud.stderr
    assert (tmp_path / "a.png").exists()
    quiet = CliRunner().invoke(main, ["-q", *args, "-o", str(tmp_path / "b.png")])
    assert quiet.exit_code == 0 and quiet.stderr == "" and (tmp_path / "b.png").exists()


def test_a_triton_repository_serving_an_openvino_int8_file_on_onnx_runtime_warns(files: dict[str, Path],
                                                                                 tmp_path: Path) -> None:
    # Triton's onnxruntime and python U-Net backends run the file in ONNX Runtime, as sample does
    bundle = tmp_path / "bundle"
    assert CliRunner().invoke(main, ["bundle", "--onnx", str(files["int8-openvino"]), "-o", str(bundle)]).exit_code == 0
    for unet_backend in ("onnxruntime", "python"):
        result = CliRunner().invoke(main, ["triton", "--bundle", str(bundle), "-o", str(tmp_path / unet_backend),
                                           "--unet-backend", unet_backend])
        assert result.exit_code == 0, result.output
        assert result.stderr.count("Warning: ") == 1, result.stderr
        assert "sink-int8-ov.onnx: this int8 file was exported with --target openvino" in result.stderr
        assert (tmp_path / unet_backend / "unet" / "config.pbtxt").is_file()
    result = CliRunner().invoke(main, ["triton", "--bundle", str(bundle), "-o", str(tmp_path / "ov"),
                                       "--unet-backend", "openvino"])
    assert result.exit_code == 0 and result.stderr == "", result.output


def test_the_target_mismatch_warning_points_at_the_callers_line(files: dict[str, Path], tmp_path: Path) -> None:
    """Through Pipeline.from_bundle the warning pointed at pipeline.py (its stacklevel one short)."""
    import warnings

    from ddpm_export.runtime import make_bundle
    from ddpm_export.serve import write_repository

    bundle = make_bundle([files["int8-openvino"]], tmp_path / "bundle")
    calls = {"from_onnx": lambda: Pipeline.from_onnx(files["int8-openvino"], threads=1),
             "from_bundle": lambda: Pipeline.from_bundle(bundle, threads=1),
             "write_repository": lambda: write_repository(bundle, tmp_path / "repo")}
    for name, call in calls.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            call()
        mismatch = [w for w in caught if issubclass(w.category, TargetMismatchWarning)]
        assert [(w.filename, w.lineno) for w in mismatch] == [(__file__, call.__code__.co_firstlineno)], name


def test_a_backend_that_is_no_str_is_a_type_error(files: dict[str, Path], tmp_path: Path) -> None:
    """backend=None or 3 was a ConfigError (a ValueError); a name of no backend stays one."""
    from ddpm_export.configbase import ConfigError
    from ddpm_export.errors import WrongTypeError
    from ddpm_export.runtime import make_bundle

    bundle = make_bundle([files["fp32"]], tmp_path / "bundle")
    for load in (lambda b: Pipeline.from_onnx(files["fp32"], backend=b),
                 lambda b: Pipeline.from_bundle(bundle, backend=b)):
        for backend in (None, 3, ["onnxruntime"]):
            with pytest.raises(WrongTypeError, match=rf"^backend={re.escape(repr(backend))} is not valid; choose one "
                                                     r"of: 'onnxruntime', 'openvino', "):
                load(backend)
        with pytest.raises(ConfigError, match=r"^backend='tflite' is not valid; choose one of: 'onnxruntime'") as info:
            load("tflite")
        assert not isinstance(info.value, TypeError)


@pytest.mark.skipif(not HAS_OPENVINO, reason="openvino is not installed (pip install 'ddpm-export[openvino]')")
def test_openvino_refuses_a_tensorrt_int8_file_it_computes_wrong(files: dict[str, Path], tmp_path: Path) -> None:
    """OpenVINO computes the signed int8 activations of a --target tensorrt file wrong (digits: one
    call 0.19 relative L2 from fp32, ONNX Runtime 0.01): sample, the Pipeline and a Triton repository
    on OpenVINO refuse it, naming the target to export (they sampled 10 dB images without a word)."""
    import onnxruntime
    import openvino

    out = export_onnx("kitchen-sink", tmp_path / "t8.onnx", precision="int8", target="tensorrt", max_batch=4,
                      validate=False, calibration=CalibrationConfig(trajectories=1, steps=4), log=lambda s: None).path
    feeds = read_info(out).spec.sample_inputs(2, seed=1)
    core = openvino.Core()

    def ov_vs_ort(path: Path) -> float:
        ov = core.compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(feeds)[0]
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return errors(ov, session.run(None, feeds)[0])[1]
    # the refusal is still needed: OpenVINO strays from ONNX Runtime on it (0.51 relative L2 here) far more than on
    # the uint8 file of --target any (0.04: this untrained model's rounding differences)
    assert ov_vs_ort(out) > 5 * ov_vs_ort(files["int8"])
    message = r"t8\.onnx: this int8 file was exported with --target tensorrt.*export with --target openvino \(or any\)$"
    with pytest.raises(BadInputError, match=message):
        Pipeline.from_onnx(out, backend="openvino", threads=1)
    Pipeline.from_onnx(out, threads=1)  # ONNX Runtime computes it right
    result = CliRunner().invoke(main, ["sample", "--onnx", str(out), "--backend", "openvino", "-o",
                                       str(tmp_path / "a.png")])
    assert result.exit_code == 2 and "--target tensorrt" in result.stderr and not (tmp_path / "a.png").exists()
    assert CliRunner().invoke(main, ["bundle", "--onnx", str(out), "-o", str(tmp_path / "b")]).exit_code == 0
    result = CliRunner().invoke(main, ["triton", "--bundle", str(tmp_path / "b"), "-o", str(tmp_path / "repo"),
                                       "--unet-backend", "openvino"])
    assert result.exit_code == 2 and "--target tensorrt" in result.stderr and not (tmp_path / "repo").exists()


@pytest.mark.skipif(not HAS_OPENVINO, reason="openvino is not installed (pip install 'ddpm-export[openvino]')")
def test_sample_names_the_precision_of_an_int8_files_float_parts(files: dict[str, Path], tmp_path: Path) -> None:
    # OpenVINO runs the ops an int8 file leaves float in its inference precision; the summary says which
    import openvino

    cpu_has_bf16 = "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")  # else bf16 runs as f32
    args = ["--threads", "1", "sample", "--onnx", str(files["int8-openvino"]), "-n", "1", "--steps", "1", "--backend",
            "openvino", "--no-progress"]
    for precision in ("f32", "bf16"):
        result = CliRunner().invoke(main, [*args, "--inference-precision", precision, "-o", str(tmp_path / "a.png"),
                                           "--force"])
        assert result.exit_code == 0, result.output
        computed = "bf16" if precision == "bf16" and cpu_has_bf16 else "f32"
        assert f"1 image, 3x16x16, int8, float parts in {computed})" in result.stdout, result.stdout
    result = CliRunner().invoke(main, [*args[:-3], "-o", str(tmp_path / "b.png")])  # ONNX Runtime: int8 alone
    assert result.exit_code == 0 and "3x16x16, int8)" in result.stdout, result.output


@pytest.mark.slow
def test_verify_holds_int8_to_its_own_thresholds(tmp_path: Path) -> None:
    # the trained digits model: the int8 limits (ddpm_export.metrics) are set from its measurements;
    # an untrained network such as kitchen-sink turns int8's error into ~31 dB final samples
    path = export_onnx("digits", tmp_path / "digits-int8.onnx", precision="int8", max_batch=8,
                       calibration=CalibrationConfig(trajectories=2, steps=10), log=lambda s: None).path
    extra = ["--backend", "openvino", "--inference-precision", "f32"] if HAS_OPENVINO else []
    result = CliRunner().invoke(main, ["--threads", "1", "verify", "--model", "digits", "--onnx", str(path),
                                       "--steps", "10", "--ddpm-steps", "20", "--solver-steps", "5", *extra])
    assert "onnxruntime (int8)" in result.output and (not extra or "openvino (int8)" in result.output)
    assert result.exit_code == 0, result.output


@pytest.fixture
def small_tmpdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """TMPDIR on a 1.5 MiB tmpfs (root only; skipped elsewhere): room for one tiny export (0.8 MiB),
    not for the copies ONNX Runtime's quantizer writes beside it."""
    import subprocess
    import tempfile

    folder = tmp_path / "small"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1500k", "tmpfs", str(folder)],
                             capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode(errors='replace').strip()}")
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def test_a_full_temporary_folder_is_named_not_a_protobuf_traceback(small_tmpdir: Path, tmp_path: Path) -> None:
    """The quantizer's shape inference writes a model copy that the full tmpfs cuts short and then
    reads it back (was a google.protobuf DecodeError traceback, exit 1): exit 2, naming TMPDIR."""
    result = CliRunner().invoke(main, ["onnx", "--model", "tiny", "-o", str(tmp_path / "t8.onnx"),
                                       "--precision", "int8", "--max-batch", "4", "--no-validate"])
    assert result.exit_code == 2, result.output
    assert ("Error: int8 quantization: ONNX Runtime's quantizer could not read back a model it wrote in "
            f"{small_tmpdir} (the temporary folder, TMPDIR; ") in result.output
    assert "free space there or set TMPDIR to a folder with room" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "t8.onnx").exists()
    assert list(small_tmpdir.iterdir()) == []  # the quantizer's folder removed


def test_verify_warns_of_an_openvino_int8_file_as_sample_does(files: dict[str, Path], tmp_path: Path) -> None:
    """verify runs the file on ONNX Runtime too: sample warned of a --target openvino int8 file,
    verify did not. The same line; the exit status is the checks' own."""
    args = ["--threads", "1", "verify", "--model", "kitchen-sink", "--steps", "2", "--ddpm-steps", "2",
            "--solver-steps", "2", "--batch", "1"]
    sample = CliRunner().invoke(main, ["sample", "--onnx", str(files["int8-openvino"]), "-n", "1", "--steps", "1",
                                       "--no-progress", "-o", str(tmp_path / "a.png")])
    [warning] = [line for line in sample.stderr.splitlines() if line.startswith("Warning: ")]
    result = CliRunner().invoke(main, [*args, "--onnx", str(files["int8-openvino"]), "--report", str(tmp_path / "r.json")])
    assert [line for line in result.stderr.splitlines() if line.startswith("Warning: ")] == [warning], result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert result.exit_code == (0 if report["passed"] else 1), result.output
    assert report["warnings"] == [warning.removeprefix("Warning: ")]  # the report keeps what was warned, as the CLI
    silent = CliRunner().invoke(main, [*args, "--onnx", str(files["int8"])])  # target any
    assert "Warning: " not in silent.stderr and silent.exit_code in (0, 1), silent.output


@pytest.fixture
def protobuf_limit(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    """Protobuf's 2 GB limit scaled down to ``limit`` bytes: onnx's serialiser (every ``onnx.save``,
    ours and ONNX Runtime's quantizer's) raises protobuf's ValueError on a message above it, as it does
    on one over 2 GB; a graph whose weights go to external data serialises its skeleton alone."""
    from onnx.serialization import _ProtobufSerializer

    serialize = _ProtobufSerializer.serialize_proto

    def set_limit(limit: int) -> None:
        def limited(self: _ProtobufSerializer, proto: onnx.ModelProto) -> bytes:
            if proto.ByteSize() > limit:
                raise ValueError(f"Message onnx.ModelProto exceeds maximum protobuf size of {limit} bytes")
            return serialize(self, proto)
        monkeypatch.setattr(_ProtobufSerializer, "serialize_proto", limited)

    return set_limit


def test_int8_of_a_graph_with_external_data(protobuf_limit: Callable[[int], None], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A graph over EXTERNAL_DATA_THRESHOLD (lowered to 0) is written with external data; its int8
    export handed the whole float32 graph to ONNX Runtime's quantizer in one message (a ValueError
    traceback over 2 GB, here over the lowered limit): now the quantizer's input and outputs carry
    external data too, and the int8 file with its <name>.onnx.data validates, samples and verifies."""
    from ddpm_export.export import onnx as onnx_export

    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_THRESHOLD", 0)
    fp32 = export_onnx("digits", tmp_path / "fp32" / "d.onnx", max_batch=4, log=lambda s: None)
    protobuf_limit(fp32.size_bytes // 2)  # the whole graph is over it, its skeleton (weights external) under
    out = tmp_path / "int8" / "d8.onnx"  # digits: trained, so that int8 holds its limits
    result = export_onnx("digits", out, precision="int8", max_batch=4, log=lambda s: None,
                         calibration=CalibrationConfig(trajectories=2, steps=10))
    assert sorted(p.name for p in out.parent.iterdir()) == ["d8.onnx", "d8.onnx.data"]
    assert result.data_path == out.parent / "d8.onnx.data" and read_info(out).precision == "int8"
    assert result.validation is not None and result.validation.rel_l2 <= INT8_REL_L2
    model = onnx.load(str(out), load_external_data=False)
    assert any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer)
    sample = CliRunner().invoke(main, ["--threads", "1", "sample", "--onnx", str(out), "-n", "1", "--steps", "2",
                                       "--no-progress", "-o", str(tmp_path / "a.png")])
    assert sample.exit_code == 0 and (tmp_path / "a.png").is_file(), sample.output
    verify = CliRunner().invoke(main, ["--threads", "1", "verify", "--model", "digits", "--onnx", str(out), "--steps", "2",
                                       "--ddpm-steps", "2", "--solver-steps", "2", "--batch", "1",
                                       "--report", str(tmp_path / "r.json")])
    assert "onnxruntime (int8)" in verify.output
    assert verify.exit_code == (0 if json.loads((tmp_path / "r.json").read_text())["passed"] else 1), verify.output


def test_a_failed_int8_export_with_external_data_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ddpm_export.export import onnx as onnx_export
    from ddpm_export.export import validate as validate_mod
    from ddpm_export.export.validate import ValidationError

    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_THRESHOLD", 0)
    monkeypatch.setattr(validate_mod, "INT8_REL_L2", 0.0)  # no int8 file passes
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    with pytest.raises(ValidationError, match="int8 relative L2 error .* nothing was written"):
        export_onnx("tiny", tmp_path / "out" / "t8.onnx", precision="int8", max_batch=4,
                    calibration=CalibrationConfig(trajectories=1, steps=2), log=lambda s: None)
    assert not (tmp_path / "out").exists() and list((tmp_path / "tmp").iterdir()) == []  # its folder made and removed
