"""``export_onnx(rewrites=...)`` / ``ddpm-export onnx --rewrites``: the exact rewrites in the graph.

The rewritten file is held to the file exported without rewrites (same weights, same inputs,
ONNX Runtime both), and to torch by the export's own validation; the ops show which rewrite
ran; the metadata records it; ``auto`` follows the measured table per precision.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from click.testing import CliRunner  # noqa: E402

from ddpm_export.cli import main  # noqa: E402
from ddpm_export.contract import metadata as md  # noqa: E402
from ddpm_export.contract.spec import ExportSpec  # noqa: E402
from ddpm_export.errors import BadInputError  # noqa: E402
from ddpm_export.export.onnx import export_onnx  # noqa: E402
from ddpm_export.export.rewrites import AUTO_REWRITES, resolve_rewrites  # noqa: E402
from ddpm_export.runtime import read_info  # noqa: E402

from export_helpers import count_ops, max_abs, run  # noqa: E402

FP32_MAX_ABS = 1e-5  # float32 rounding of the folded weights; measured 1e-7 .. 6e-7 on tiny


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """tiny (zero_init off: every weight nonzero) exported with each rewrite set, batch 1..4."""
    root = tmp_path_factory.mktemp("rewrites")
    out = {}
    for name in ("none", "upsample-deconv", "upsample-subpixel", "attention-fold", "auto"):
        out[name] = export_onnx("tiny", root / f"{name}.onnx", rewrites=name, max_batch=4, opt_batch=2,
                                log=lambda line: None)
    return out


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _weighted_matmuls(model: onnx.ModelProto) -> int:
    weights = {t.name for t in model.graph.initializer}
    return sum(1 for n in model.graph.node if n.op_type == "MatMul" and any(i in weights for i in n.input))


def test_each_rewrite_changes_the_graph_as_stated(files):
    plain = onnx.load(str(files["none"].path))
    deconv = onnx.load(str(files["upsample-deconv"].path))
    folded = onnx.load(str(files["attention-fold"].path))
    n_up = count_ops(plain, "Resize")
    assert n_up >= 1 and count_ops(plain, "ConvTranspose") == 0
    assert count_ops(deconv, "Resize") == 0 and count_ops(deconv, "ConvTranspose") == n_up
    assert count_ops(deconv, "Conv") == count_ops(plain, "Conv") - n_up
    # subpixel: each upsampling conv becomes four 2 x 2 convs (asymmetric pads, no Pad node) + DepthToSpace
    subpixel = onnx.load(str(files["upsample-subpixel"].path))
    assert count_ops(subpixel, "Resize") == 0 and count_ops(subpixel, "Pad") == count_ops(plain, "Pad")
    assert count_ops(subpixel, "Conv") == count_ops(plain, "Conv") + 3 * n_up
    d2s = [n for n in subpixel.graph.node if n.op_type == "DepthToSpace"]
    assert len(d2s) == n_up and all(_attrs(n) == {"blocksize": 2, "mode": b"DCR"} for n in d2s)
    phases = [_attrs(n)["pads"] for n in subpixel.graph.node if n.op_type == "Conv" and _attrs(n)["kernel_shape"] == [2, 2]]
    assert sorted(phases) == sorted([[1 - a, 1 - b, a, b] for a in (0, 1) for b in (0, 1)] * n_up)
    # four projections per single-head attention become two (q''; v'' with the out bias after)
    assert _weighted_matmuls(folded) == _weighted_matmuls(plain) // 2
    assert count_ops(folded, "Resize") == n_up


@pytest.mark.parametrize("name", ["upsample-deconv", "upsample-subpixel", "attention-fold", "auto"])
def test_rewritten_file_computes_what_the_plain_file_computes(files, name):
    spec = read_info(files["none"].path).spec
    for batch in (1, 4):
        feeds = spec.sample_inputs(batch, seed=batch)
        ref = run(files["none"].path, feeds)[0]
        out = run(files[name].path, feeds)[0]
        assert max_abs(out, ref) < FP32_MAX_ABS
        assert np.abs(ref).max() > 0.1  # the check compares real outputs
    assert files[name].validation.max_abs < FP32_MAX_ABS  # and the export's own check against torch


def test_metadata_records_the_rewrites(files):
    assert read_info(files["auto"].path).rewrites == ("upsample-deconv", "attention-fold")
    assert read_info(files["none"].path).rewrites == ()
    assert read_info(files["attention-fold"].path).metadata[md.REWRITES] == "attention-fold"
    assert files["auto"].rewrites == AUTO_REWRITES["fp32"]


def test_a_file_without_the_keys_reads_as_no_rewrites_for_any_target(files):
    props = dict(read_info(files["auto"].path).metadata)
    assert props[md.TARGET] == "any"
    del props[md.REWRITES], props[md.TARGET]  # a file written before the keys existed
    from ddpm_export.runtime.info import ModelInfo

    info = ModelInfo.from_metadata(props)
    assert info.rewrites == () and info.target == "any"


def test_resolve_rewrites():
    assert resolve_rewrites("auto", "fp32") == ("upsample-deconv", "attention-fold")
    assert resolve_rewrites("auto", "int8") == ("upsample-subpixel", "attention-fold")  # int8 kernels take plain convs
    assert resolve_rewrites("auto", "fp16") == resolve_rewrites("auto", "int8", "tensorrt") == ()
    assert resolve_rewrites("none", "fp32") == ()
    assert resolve_rewrites("auto", "fp32", "tensorrt") == ()  # not measured on a GPU
    assert resolve_rewrites("auto", "fp32", "onnxruntime") == resolve_rewrites("auto", "fp32", "any")
    # a list comes back de-duplicated, in the canonical order
    assert resolve_rewrites("attention-fold, upsample-deconv,attention-fold", "int8") == (
        "upsample-deconv", "attention-fold")
    with pytest.raises(BadInputError, match="'fast' are not valid; choose from: upsample-deconv, upsample-subpixel, "
                                            "attention-fold"):
        resolve_rewrites("upsample-deconv,fast", "fp32")
    with pytest.raises(BadInputError, match="both rewrite the upsampling conv; choose one"):
        resolve_rewrites("upsample-subpixel,upsample-deconv", "fp32")


def test_cli_refuses_a_bad_rewrite_before_exporting(tmp_path):
    out = tmp_path / "m.onnx"
    result = CliRunner().invoke(main, ["onnx", "-m", "tiny", "-o", str(out), "--rewrites", "magic"])
    assert result.exit_code == 2
    assert ("'magic' are not valid; choose from: upsample-deconv, upsample-subpixel, attention-fold (or auto, none)"
            in result.output)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_cli_reports_the_rewrites(tmp_path):
    out = tmp_path / "m.onnx"
    result = CliRunner().invoke(main, ["onnx", "-m", "tiny", "-o", str(out), "--rewrites", "upsample-deconv",
                                       "--max-batch", "2", "--opt-batch", "1", "--no-validate"])
    assert result.exit_code == 0, result.output
    assert "rewrites upsample-deconv," in result.output
    spec = ExportSpec.from_config(read_info(out).unet, max_batch=2, opt_batch=1)
    assert read_info(out).spec == spec


def test_a_rewrite_that_finds_nothing_is_not_recorded(tmp_path):
    """kitchen-sink's attention has several heads (no fold): attention-fold asked for by name is
    said and left out of the metadata, which used to claim a fold the graph does not hold."""
    lines: list[str] = []
    result = export_onnx("kitchen-sink", tmp_path / "k.onnx", rewrites="attention-fold,upsample-deconv",
                         validate=False, log=lines.append)
    info = read_info(result.path)
    assert result.rewrites == info.rewrites == ("upsample-deconv",)
    assert any("rewrites attention-fold: nothing to rewrite in kitchen-sink; not applied" in line for line in lines)
    assert count_ops(onnx.load(str(result.path)), "ConvTranspose") >= 1
