"""The fp32 -> fp16 graph pass (``ddpm_export.export.fp16_pass``) against the file that
``ddpm-export onnx --precision fp16`` writes from the same model: the same types node by node, the
fp32 islands in float32, and the same error against torch float32 on ONNX Runtime's CPU provider.

Each model is exported once per module in both precisions (without export validation: the export
tests validate these files) and the fp32 file converted.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from ddpm_export.contract import metadata as md  # noqa: E402
from ddpm_export.export import fp16_pass  # noqa: E402
from ddpm_export.export.onnx import export_onnx  # noqa: E402
from ddpm_export.export.precision_policy import policy  # noqa: E402
from ddpm_export.export.validate import torch_reference  # noqa: E402
from ddpm_export.metrics import FP16_REL_L2, errors  # noqa: E402
from ddpm_export.nn.checkpoint import load_model  # noqa: E402
from ddpm_export.contract.info import ModelInfo  # noqa: E402

from export_helpers import CONFIGS, FLOAT, FLOAT16, infer, save_test_checkpoint  # noqa: E402

#: (model, attention form): the presets, the shipped digits model, every feature checkpoint that changes
#: what is fp32 (learned table, 2D sinusoids, batch norm, context, class embedding, attention conditioning)
#: and the two fused attention forms
#: (the first three in the default run, the others marked slow: about 1 s of export each, unloaded)
FAST = [("tiny", "decomposed"), ("kitchen-sink", "decomposed"), ("digits", "decomposed")]
SLOW = [("tiny", "ort-mha"), ("kitchen-sink", "onnx-attention"),
        *[(name, "decomposed") for name in ("learned", "sinusoidal-2d", "batch-norm", "context",
                                            "class-embedding", "attention-cond")]]
CASES = [*FAST, *(pytest.param(*c, marks=pytest.mark.slow) for c in SLOW)]
IDS = ["-".join(c) for c in [*FAST, *SLOW]]
#: the pass may not be worse than the direct export by more than this factor (measured: equal)
ERROR_FACTOR = 1.5


@dataclasses.dataclass
class Files:
    fp32: Path
    fp16: Path
    passed: Path
    source: str | Path

    @functools.cached_property
    def models(self) -> dict[str, "onnx.ModelProto"]:
        return {k: onnx.load(str(getattr(self, k))) for k in ("fp32", "fp16", "passed")}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("fp16pass")
    cache: dict[tuple[str, str], Files] = {}

    def get(name: str, attention: str) -> Files:
        if (name, attention) not in cache:
            source = save_test_checkpoint(name, root / "ckpt") if name in CONFIGS else name
            stem = root / f"{name}-{attention}"
            opset = 23 if attention == "onnx-attention" else 20
            # no rewrites in either file: the pass must map the fp32 graph node for node onto the fp16 export
            paths = [export_onnx(source, f"{stem}-{p}.onnx", precision=p, attention=attention, opset=opset,
                                 rewrites="none", min_batch=1, opt_batch=2, max_batch=4, validate=False,
                                 log=lambda s: None).path
                     for p in ("fp32", "fp16")]
            passed = fp16_pass.convert_file(paths[0], f"{stem}-pass.onnx")
            cache[(name, attention)] = Files(*paths, passed, source)
        return cache[(name, attention)]

    return get


def _session(path: Path) -> "ort.InferenceSession":
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("name, attention", CASES, ids=IDS)
def test_pass_has_the_error_of_the_exported_fp16_file(files, name, attention):
    f = files(name, attention)
    unet = load_model(f.source)
    spec = ModelInfo.from_metadata({p.key: p.value for p in f.models["passed"].metadata_props}).spec
    got = {"fp16": [], "passed": []}
    for batch in (1, 3):
        feeds = spec.sample_inputs(batch, seed=batch)
        feeds["t"][0] = 937
        ref = torch_reference(unet, spec, feeds)
        for key in got:
            out = _session(getattr(f, key)).run(None, feeds)[0]
            assert out.dtype == np.float32 and out.shape == ref.shape
            got[key].append(errors(out, ref)[1])
    export_rel, pass_rel = max(got["fp16"]), max(got["passed"])
    print(f"{name} {attention}: rel L2 vs torch fp32: exported fp16 {export_rel:.3e}, fp16 pass {pass_rel:.3e}")
    assert np.isfinite(pass_rel) and pass_rel <= FP16_REL_L2
    assert pass_rel <= ERROR_FACTOR * export_rel + 1e-7, (pass_rel, export_rel)


def _node_types(model: "onnx.ModelProto") -> dict[str, tuple[int, ...]]:
    """Node name -> the float element types of its outputs (shape inference)."""
    types, _ = infer(model)
    return {n.name: tuple(types.get(o, 0) for o in n.output if types.get(o) in (FLOAT, FLOAT16))
            for n in model.graph.node if n.op_type not in ("Constant", "Identity", "Cast")}


@pytest.mark.parametrize("name, attention", CASES, ids=IDS)
def test_every_node_computes_in_the_type_the_fp16_export_gives_it(files, name, attention):
    m = files(name, attention).models
    exported, passed = _node_types(m["fp16"]), _node_types(m["passed"])
    common = [n for n in exported if n in passed and exported[n]]
    assert len(common) > 0.9 * len([n for n in exported if exported[n]]), "the node names should carry over"
    differ = {n: (exported[n], passed[n]) for n in common if exported[n] != passed[n]}
    assert not differ, f"{len(differ)} nodes compute in another type than in the fp16 export: {list(differ.items())[:5]}"
    assert {FLOAT, FLOAT16} <= {t for n in common for t in passed[n]}


@pytest.mark.parametrize("name", ["tiny", "kitchen-sink", pytest.param("learned", marks=pytest.mark.slow),
                                  pytest.param("sinusoidal-2d", marks=pytest.mark.slow)])
def test_islands_stay_float32_and_the_rest_is_float16(files, name):
    f = files(name, "decomposed")
    islands = fp16_pass.fp32_islands(f.models["fp32"])
    assert islands["embedding"] and islands["normalization"] and islands["softmax"]
    model = f.models["passed"]
    types, _ = infer(model)
    nodes = {n.name: n for n in model.graph.node}
    for island, names in islands.items():
        for node_name in names:
            node = nodes.get(node_name)  # a no-op Cast of the fp32 graph may be gone
            if node is None or node.op_type == "Constant":
                continue
            for out in node.output:
                assert types.get(out) != FLOAT16, f"{island}: {node.op_type} {node_name} -> {out} is float16"
    index = {i.name: i.data_type for i in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert convs and all(index[c.input[1]] == FLOAT16 and types[c.output[0]] == FLOAT16 for c in convs)
    io = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]}
    assert io["x_t"] == FLOAT and io["model_output"] == FLOAT
    sizes = {FLOAT: 0, FLOAT16: 0}
    exported = {FLOAT: 0, FLOAT16: 0}
    for m, acc in ((model, sizes), (f.models["fp16"], exported)):
        for init in m.graph.initializer:
            if init.data_type in acc:
                acc[init.data_type] += int(np.prod(init.dims))
    assert sizes == exported, (sizes, exported)  # the same weights in fp32 (islands) and fp16


def test_time_embedding_is_bit_identical_to_the_fp32_file(files):
    """t = 937 must stay 937: the embedding the network receives equals the fp32 file's."""
    from export_helpers import with_outputs, run

    m = files("kitchen-sink", "decomposed").models
    types32, _ = infer(m["fp32"])
    typesp, _ = infer(m["passed"])
    island = fp16_pass.fp32_islands(m["fp32"])["embedding"]
    embedding_nodes = [n for n in m["fp32"].graph.node if n.name in island and n.name.startswith("/unet/time_embedding/")]
    last = embedding_nodes[-1].output[0]  # the embedding MLP's output, before the cast to the network's dtype
    producer = {o: n.name for n in m["passed"].graph.node for o in n.output}
    name = next(o for n in m["passed"].graph.node if n.name == embedding_nodes[-1].name for o in n.output)
    assert producer[name] == embedding_nodes[-1].name and typesp[name] == FLOAT
    spec = ModelInfo.from_metadata({p.key: p.value for p in m["passed"].metadata_props}).spec
    feeds = spec.sample_inputs(2, seed=5)
    feeds["t"][:] = 937
    a = run(with_outputs(m["fp32"], [last], types32), feeds, [last])[0]
    b = run(with_outputs(m["passed"], [name], typesp), feeds, [name])[0]
    np.testing.assert_array_equal(a, b)


def test_metadata_records_the_policy_and_the_source(files):
    f = files("tiny", "decomposed")
    props = {p.key: p.value for p in f.models["passed"].metadata_props}
    source = {p.key: p.value for p in f.models["fp32"].metadata_props}
    assert json.loads(props[md.PRECISION_POLICY]) == policy("fp16")
    record = json.loads(props[fp16_pass.FP16_PASS])
    assert record["from_sha256"] == md.sha256_file(f.fp32) and record["converter"].startswith("onnxruntime")
    for key in (md.UNET_CONFIG, md.DIFFUSION_CONFIG, md.EXPORT_SPEC, md.SOURCE_SHA256, md.SOURCE_TENSORS_SHA256,
                md.ATTENTION):
        assert props[key] == source[key]
    assert ModelInfo.from_metadata(props).precision == "fp16"
    onnx.checker.check_model(str(f.passed), full_check=True)
    # docs/metadata.md describes every key a file of ours carries (it lacked the fp16 pass's record)
    documented = (Path(__file__).parents[2] / "docs" / "metadata.md").read_text(encoding="utf-8")
    assert [key for key in props if f"| `{key}` |" not in documented] == []


def test_conversion_is_deterministic_and_refuses_what_it_cannot_convert(files, tmp_path):
    f = files("tiny", "decomposed")
    again = fp16_pass.convert_file(f.fp32, tmp_path / "again.onnx")
    assert again.read_bytes() == f.passed.read_bytes()
    with pytest.raises(FileExistsError, match="--force"):
        fp16_pass.convert_file(f.fp32, again)
    with pytest.raises(ValueError, match="fp16 graph already"):
        fp16_pass.convert_file(f.fp16, tmp_path / "x.onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="r")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), str(tmp_path / "relu.onnx"))
    with pytest.raises(ValueError, match="not a ddpm-export ONNX file"):
        fp16_pass.convert_file(tmp_path / "relu.onnx", tmp_path / "y.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.onnx", "relu.onnx"]
