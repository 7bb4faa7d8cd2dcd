"""TensorRT's per-layer profile in `inspect`: layer names (built from the node names of a real
`ddpm-export onnx --target tensorrt` export, fused the ways TensorRT fuses them) -> block and op
category, aggregation of (layer, ms) reports, and refusing --engine without TensorRT / a GPU.

The oracle for a node's block is independent of the name mapping: the parameter a Conv or bias Add
reads (``unet.down.1.resnets.0.conv1.weight``) names its module outright; a ResBlock's norm1 is
the last InstanceNormalization before its conv1.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from ddpm_export import load_model
from ddpm_export.analysis.blocks import iter_blocks
from ddpm_export.analysis.profile import CATEGORIES, GLUE
from ddpm_export.analysis.trt_layers import layer_map, node_names, place_layer, summarise_layers
from ddpm_export.cli import main
from ddpm_export.export.onnx import export_onnx


@pytest.fixture(scope="module")
def tiny():
    """(exported graph, LayerMap, block names) of the tiny preset."""
    import tempfile

    unet = load_model("tiny")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tiny.onnx"
        export_onnx("tiny", path, target="tensorrt", validate=False, log=lambda m: None)
        graph = onnx.load(str(path)).graph
    return graph, layer_map(unet), [n for n, _ in iter_blocks(unet)]


def _block_of_param(param: str, blocks: list[str]) -> str:
    module = param.removeprefix("unet.")
    return max((b for b in blocks if module.startswith(b + ".")), key=len)


def _reading(graph, op: str, suffix: str) -> list[tuple[int, str]]:
    """(index, parameter) of every ``op`` node reading a parameter whose name ends in ``suffix``."""
    params = {i.name for i in graph.initializer}
    return [(i, p) for i, n in enumerate(graph.node) if n.op_type == op
            for p in n.input if p in params and p.endswith(suffix)]


def _norm1s(graph, blocks: list[str]) -> list[tuple[int, str]]:
    """(index of the norm1 InstanceNormalization, block) of every ResBlock."""
    out = []
    for i, param in _reading(graph, "Conv", "conv1.weight"):
        j = max(k for k in range(i) if graph.node[k].op_type == "InstanceNormalization")
        out.append((j, _block_of_param(param, blocks)))
    return out


def test_exported_names_repeat_across_levels(tiny):
    """The reason for the two-trace map: the same scope name stands for blocks of different levels."""
    graph, _, blocks = tiny
    convs = _reading(graph, "Conv", "conv1.weight")
    scopes = {graph.node[i].name.split("/")[2] for i, _ in convs}
    owners = {_block_of_param(p, blocks) for _, p in convs}
    assert len(owners) > len(scopes) and "resnets.0" in scopes


def test_fused_conv_layers_land_in_the_block_owning_the_weight(tiny):
    graph, lmap, blocks = tiny
    convs = _reading(graph, "Conv", ".weight")
    assert len(convs) >= 15
    for i, param in convs:
        want = _block_of_param(param, blocks)
        conv, after = graph.node[i].name, graph.node[i + 1].name
        assert place_layer(conv, lmap) == (want, "conv"), conv
        assert place_layer(f"{conv} + {after}", lmap) == (want, "conv"), (conv, after)
        assert place_layer(f"PWN({after}, {conv})", lmap) == (want, "conv")
        assert place_layer(f"Reformatting CopyNode for Input Tensor 0 to {conv}", lmap) == (want, "layout")


def test_norm_and_attention_regions(tiny):
    graph, lmap, blocks = tiny
    names = [n.name for n in graph.node]
    norms = _norm1s(graph, blocks)
    assert len(norms) >= 5
    for i, want in norms:
        assert graph.node[i + 3].op_type == "Mul"  # InstanceNormalization, Shape, Reshape, Mul (the scale)
        assert place_layer(f"{names[i]} + {names[i + 3]}", lmap) == (want, "normalization")
    to_q = _reading(graph, "Add", "attn.to_q.bias")
    assert len(to_q) >= 2
    for i, param in to_q:
        want = _block_of_param(param, blocks)
        softmax = next(j for j in range(i, len(names)) if graph.node[j].op_type == "Softmax")
        layer = "{ForeignNode[" + names[i] + "..." + names[softmax] + "]}"
        got, _ = node_names(layer, lmap)
        assert got == names[i:softmax + 1]  # the region spans the graph between its ends
        assert place_layer(layer, lmap) == (want, "attention")


def test_layers_naming_no_node_and_unscoped_ops(tiny):
    graph, lmap, _ = tiny
    assert place_layer("[trainStation1]", lmap) is None
    assert place_layer("shapeHostToDevice", lmap) is None
    assert place_layer("12", lmap) is None  # engines built with ProfilingVerbosity.NONE
    concat = next(n.name for n in graph.node if n.op_type == "Concat" and n.name.startswith("/unet/Concat"))
    assert place_layer(concat, lmap) == (GLUE, "elementwise")  # the U-Net's skip concatenation


def test_summarise_sums_reports_per_category_and_block(tiny):
    graph, lmap, blocks = tiny
    (i, param), (j, param2) = _reading(graph, "Conv", "conv1.weight")[:2]
    conv, conv2 = graph.node[i].name, graph.node[j].name
    norm = _norm1s(graph, blocks)[0]
    reports = [(f"{conv} + {graph.node[i + 1].name}", 0.5), (conv2, 0.25), (graph.node[norm[0]].name, 0.125),
               ("[trainStation1]", 0.0625)] * 3
    prof = summarise_layers(reports, lmap, runs=3, batch=2)
    assert prof.total_us == pytest.approx(3 * 937.5)
    assert prof.by_category["conv"] == pytest.approx(3 * 750.0)
    assert prof.by_category["normalization"] == pytest.approx(3 * 125.0)
    assert prof.by_category["elementwise"] == pytest.approx(3 * 62.5) == pytest.approx(prof.unplaced_us)
    assert set(prof.by_category) == set(CATEGORIES) and prof.by_category["attention"] == 0.0
    b1, b2, bn = _block_of_param(param, blocks), _block_of_param(param2, blocks), norm[1]
    want = {GLUE: 187.5}
    for block, us in ((b1, 1500.0), (b2, 750.0), (bn, 375.0)):
        want[block] = want.get(block, 0.0) + us
    assert prof.by_block == pytest.approx(want)
    assert sum(prof.by_layer.values()) == pytest.approx(prof.total_us) and prof.share(prof.total_us) == 1.0


def test_engine_option_without_tensorrt_exits_2_before_any_work(tmp_path):
    pytest.importorskip("torch")
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here")
    out = tmp_path / "r.json"
    result = CliRunner().invoke(main, ["inspect", "-m", "tiny", "--profile", "--engine", str(tmp_path / "x.plan"),
                                       "--json", str(out)])
    assert result.exit_code == 2, result.output
    assert "tensorrt" in result.output and "Traceback" not in result.output
    assert "block" not in result.output and len(result.output.strip().splitlines()) == 1  # no tables first
    assert not out.exists()
    result = CliRunner().invoke(main, ["inspect", "-m", "tiny", "--engine", str(tmp_path / "x.plan")])
    assert result.exit_code == 2 and "--profile" in result.output


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_real_engine_profile(tmp_path):
    from ddpm_export.analysis.trt_profile import profile_tensorrt
    from ddpm_export.export.tensorrt import build_engine

    onnx_path, plan = tmp_path / "tiny.onnx", tmp_path / "tiny.plan"
    export_onnx("tiny", onnx_path, target="tensorrt", validate=False, log=lambda m: None)
    build_engine(onnx_path, plan, log=lambda m: None)
    unet = load_model("tiny")
    prof = profile_tensorrt(unet, plan, batch=2, runs=3)
    assert prof.total_us > 0 and sum(prof.by_block.values()) == pytest.approx(prof.total_us)
    assert prof.by_category["conv"] > 0
    assert set(prof.by_block) <= {n for n, _ in iter_blocks(unet)} | {GLUE}
    assert prof.unplaced_us < 0.5 * prof.total_us, prof.by_layer
    result = CliRunner().invoke(main, ["inspect", "-m", "tiny", "--profile", "--profile-runs", "2",
                                       "--erf-samples", "1", "--batch", "2", "--engine", str(plan)])
    assert result.exit_code == 0, result.output
    assert "TensorRT per-layer profile" in result.output


def test_check_engine_refuses_missing_files_sidecars_and_batches(tmp_path):
    from ddpm_export.analysis.trt_profile import check_engine
    from ddpm_export.contract.sidecar import make_sidecar, write_sidecar
    from ddpm_export.errors import BadInputError, IntegrityError

    plan = tmp_path / "tiny.plan"
    with pytest.raises(BadInputError, match="no such file"):
        check_engine(plan, 1)
    plan.write_bytes(b"not an engine")
    with pytest.raises(IntegrityError, match="sidecar"):
        check_engine(plan, 1)
    write_sidecar(plan, make_sidecar(onnx_file="tiny.onnx", onnx_sha256="0" * 64, tensorrt_version="10.0.0",
                                     gpu={}, precision="fp32", build_seconds=1.0,
                                     profile={"x_t": ((1, 3, 16, 16), (4, 3, 16, 16), (8, 3, 16, 16))}))
    check_engine(plan, 8)
    with pytest.raises(BadInputError, match=r"--batch 9: .*1\.\.8"):
        check_engine(plan, 9)


def test_an_engine_of_another_model_is_refused_before_any_work(tmp_path):
    """The sidecar names the ONNX file the engine came from: found beside it (same sha256), its
    model config must be the model's; not found, the input shape must be."""
    from ddpm_export.analysis.trt_profile import check_built_from
    from ddpm_export.contract.metadata import sha256_file
    from ddpm_export.contract.sidecar import make_sidecar, write_sidecar
    from ddpm_export.errors import BadInputError

    graph = export_onnx("tiny", tmp_path / "tiny.onnx", target="tensorrt", validate=False, log=lambda m: None).path
    plan = tmp_path / "tiny.plan"
    plan.write_bytes(b"an engine")
    write_sidecar(plan, make_sidecar(onnx_file="tiny.onnx", onnx_sha256=sha256_file(graph), tensorrt_version="10.9.0",
                                     gpu={}, precision="fp32", build_seconds=1.0,
                                     profile={"x_t": ((1, 3, 16, 16), (4, 3, 16, 16), (8, 3, 16, 16))}))
    tiny, digits = load_model("tiny").config, load_model("digits").config
    assert check_built_from(plan, tiny) == sha256_file(graph)  # handed to the backend, which checks it again
    with pytest.raises(BadInputError, match=r"built from tiny\.onnx, an export of another model \(its .*"
                                            r"in_channels.* differ\)"):
        check_built_from(plan, digits)
    result = CliRunner().invoke(main, ["inspect", "-m", "digits", "--profile", "--engine", str(plan)])
    assert result.exit_code == 2  # without TensorRT: refused for that first (nothing else runs)
    graph.unlink()  # the graph is gone: only the shape can tell
    assert check_built_from(plan, tiny) is None
    with pytest.raises(BadInputError, match=r"takes x_t of \[3, 16, 16\] per image, the model \[1, 16, 16\]"):
        check_built_from(plan, digits)
