"""``metadata_props`` from the protobuf wire format (``ddpm_export.runtime.onnx_wire``): the oracle
is the ``onnx`` package's own parser, on real exports and on hand-made messages; malformed bytes
give None (the caller falls back to a full parser for its error message), never a wrong dict."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("torch", reason="the exports need torch")
from onnx import TensorProto, helper  # noqa: E402

from ddpm_export.runtime.info import read_info, read_metadata  # noqa: E402
from ddpm_export.runtime.onnx_wire import scan_external_data, scan_metadata_props  # noqa: E402

from runtime_exports import exported  # noqa: E402


def _onnx_props(path: Path) -> dict[str, str]:
    """What the onnx package parses (a repeated key: the last one, as a dict keeps it)."""
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return exported("tiny", tmp_path_factory)


def test_an_export_reads_as_onnx_reads_it(tiny: Path, tmp_path: Path) -> None:
    props = scan_metadata_props(tiny)
    assert props == _onnx_props(tiny) and "ddpm_export.unet_config" in props
    # the weights in an external data file: the .onnx alone still carries the metadata
    external = tmp_path / "ext.onnx"
    onnx.save_model(onnx.load(str(tiny)), str(external), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="ext.onnx.data", size_threshold=0)
    assert scan_metadata_props(external) == props
    assert read_info(external) == read_info(tiny)


def _model(props: list[tuple[str, str]], weights: int = 1000) -> onnx.ModelProto:
    """A one-node model with ``weights`` float weights (the graph the scan skips) and ``props``."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [weights], np.arange(weights, dtype=np.float32))
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [weights])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [weights])], [w])
    model = helper.make_model(graph, producer_name="test", opset_imports=[helper.make_opsetid("", 17)])
    for key, value in props:
        model.metadata_props.add(key=key, value=value)
    return model


@pytest.mark.parametrize("props", [
    [("a", "1")],
    [("unicode ✓", "températures — 温度"), ("empty", ""), ("", "no key")],
    [("dup", "first"), ("other", "x"), ("dup", "last")],  # a repeated key: the last one
    [("long", "v" * 70000)],  # a length that needs a 3-byte varint
])
def test_hand_made_messages(tmp_path: Path, props: list[tuple[str, str]]) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(_model(props, weights=50000), str(path))
    assert scan_metadata_props(path) == _onnx_props(path) == dict(props)


def test_malformed_bytes_give_none(tiny: Path, tmp_path: Path) -> None:
    data = tiny.read_bytes()
    cases = {"empty": b"", "text": b"hello, I am not a model\n", "random": bytes(range(256)) * 64,
             "field-0": b"\x00\x01", "wire-type-3": b"\x0b\x00"}
    # cut anywhere: inside the graph, inside the metadata, one byte short of the end
    cases.update({f"cut-{n}": data[:n] for n in (1, len(data) // 2, len(data) - 200, len(data) - 1)})
    for name, raw in cases.items():
        path = tmp_path / f"{name}.onnx"
        path.write_bytes(raw)
        assert scan_metadata_props(path) is None, name
    no_metadata = tmp_path / "plain.onnx"
    onnx.save(_model([]), str(no_metadata))
    assert scan_metadata_props(no_metadata) is None  # nothing to return: the full parser says why


def test_read_metadata_needs_neither_onnxruntime_nor_onnx(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A deployment with only the runtime package reads an export's metadata (TensorRT-only hosts)."""
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    monkeypatch.setitem(sys.modules, "onnx", None)
    assert read_metadata(tiny) == _onnx_props(tiny)


def _onnx_locations(path: Path) -> list[str]:
    """What the onnx package finds: every external tensor's location."""
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    proto = onnx.load(str(path), load_external_data=False)
    return sorted({e.value for t in _get_all_tensors(proto) if uses_external_data(t) for e in t.external_data
                   if e.key == "location"})


def test_external_data_locations_read_as_onnx_reads_them(tiny: Path, tmp_path: Path) -> None:
    """Without onnx, a bundle took only <name>.data: weights saved under another name were left out."""
    one, many = tmp_path / "one" / "m.onnx", tmp_path / "many" / "m.onnx"
    for path in (one, many):
        path.parent.mkdir()
    onnx.save_model(onnx.load(str(tiny)), str(one), save_as_external_data=True, location="weights.bin",
                    size_threshold=0, convert_attribute=True)  # node attributes' tensors too
    onnx.save_model(onnx.load(str(tiny)), str(many), save_as_external_data=True, all_tensors_to_one_file=False,
                    size_threshold=0)  # one file per tensor
    assert scan_external_data(one) == _onnx_locations(one) == ["weights.bin"]
    assert scan_external_data(many) == _onnx_locations(many) and len(scan_external_data(many)) > 10
    assert scan_external_data(tiny) == _onnx_locations(tiny) == []
    sub = helper.make_graph([helper.make_node("Constant", [], ["c"], value=helper.make_tensor(
        "big", TensorProto.FLOAT, [4096], np.ones(4096, np.float32).tobytes(), raw=True))], "then", [],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [4096])])
    graph = helper.make_graph([helper.make_node("If", ["b"], ["y"], then_branch=sub, else_branch=sub)], "g",
                              [helper.make_tensor_value_info("b", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4096])])
    nested = tmp_path / "if.onnx"
    onnx.save_model(helper.make_model(graph), str(nested), save_as_external_data=True, location="if.bin",
                    size_threshold=0, convert_attribute=True)  # a tensor in a subgraph's node attribute
    assert scan_external_data(nested) == _onnx_locations(nested) == ["if.bin"]
    (tmp_path / "cut.onnx").write_bytes(one.read_bytes()[:-3])
    assert scan_external_data(tmp_path / "cut.onnx") is None
