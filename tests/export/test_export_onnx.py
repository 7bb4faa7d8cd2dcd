"""ONNX export (``ddpm_export.export.onnx.export_onnx``) of the presets and of small checkpoints
that each turn on one feature, in every attention form and precision.

Each (model, precision, attention) file is exported once per module into a temporary folder
(``exported``) and shared by the tests that read it: validation numbers, the ops of each
attention form, the q/k pre-scaling of the decomposed form, the fp16 precision policy in the
graph (fp32 time embedding equal to the fp32 export's, fp16 convolution weights, fp32 norms),
metadata, determinism, the file-writing rules, dynamic batch and context, and Polygraphy I/O.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from safetensors.torch import save as safetensors_save  # noqa: E402

from ddpm_export import __version__  # noqa: E402
from ddpm_export.config import UNetConfig  # noqa: E402
from ddpm_export.contract import metadata as md
from ddpm_export.contract.spec import ExportSpec  # noqa: E402
from ddpm_export.diffusion.config import DiffusionConfig  # noqa: E402
from ddpm_export.export import graph  # noqa: E402
from ddpm_export.export import onnx as onnx_export  # noqa: E402
from ddpm_export.export import validate as validate_mod  # noqa: E402
from ddpm_export.export.onnx import DEFAULT_OPSET, ExportResult, export_onnx  # noqa: E402
from ddpm_export.export.validate import ValidationError  # noqa: E402
from ddpm_export.nn.attention import Attention  # noqa: E402
from ddpm_export.nn.checkpoint import WEIGHTS_NAME, load_model  # noqa: E402
from ddpm_export.nn.weights import meta_model, tensors_sha256  # noqa: E402
from ddpm_export.presets import preset_dir  # noqa: E402

from export_helpers import (  # noqa: E402
    CONFIGS, DIFFUSION, FLOAT, FLOAT16, GraphIndex, consumers, count_ops, infer, max_abs,
    producers, rel_l2, run, save_test_checkpoint, with_outputs,
)

#: what the tests hold the exports to (tighter than export_onnx's own fp32 limit of 1e-4)
FP32_MAX_ABS = 1e-5
FP16_REL_L2 = 2e-2
FORMS = ("decomposed", "ort-mha", "onnx-attention")
PRECISIONS = ("fp32", "fp16")
#: batch ranges per model (default 1/4/16 otherwise): ddpm-cifar10 (35.7 M parameters, fp16 convolutions
#: on a CPU while tracing) is validated at 1..4 to keep its two exports quick
BATCHES = {"ddpm-cifar10": dict(min_batch=1, opt_batch=2, max_batch=4)}

PRESET_CASES = [(m, p, a) for m in ("tiny", "kitchen-sink") for p in PRECISIONS for a in FORMS]
FEATURES = ("context", "learned", "class-embedding", "batch-norm", "sinusoidal-2d", "attention-cond")
#: the fused forms on the models whose attention differs most from self-attention (cross-attention
#: to a context of another length; time-conditioning attention inside every residual block)
FEATURE_CASES = ([(m, p, "decomposed") for m in FEATURES for p in PRECISIONS]
                 + [("context", "fp32", "ort-mha"), ("context", "fp16", "onnx-attention"),
                    ("attention-cond", "fp32", "onnx-attention"), ("attention-cond", "fp16", "ort-mha")])
CIFAR_CASES = [("ddpm-cifar10", p, "decomposed") for p in PRECISIONS]


def _is_slow(value) -> bool:
    """ddpm-cifar10 (35.7 M parameters; its exports take ~45 s), and the fused attention forms on
    models other than tiny (tiny covers every form in the quick run)."""
    v = value if isinstance(value, tuple) else (value,)
    fused = len(v) == 3 and v[2] != "decomposed" and v[0] != "tiny"
    return "ddpm-cifar10" in v or fused


def slow_if_cifar(values):
    """The slow parameters (:func:`_is_slow`) carry the slow mark; they still run in CI."""
    return [pytest.param(v, marks=pytest.mark.slow) if _is_slow(v) else v for v in values]
#: the shipped trained model: every preset exports and validates in both precisions
DIGITS_CASES = [("digits", p, "decomposed") for p in PRECISIONS]
ALL_CASES = PRESET_CASES + FEATURE_CASES + CIFAR_CASES + DIGITS_CASES


def _case_id(case: tuple[str, str, str]) -> str:
    return "-".join(case)


@dataclasses.dataclass
class Exported:
    result: ExportResult
    model: "onnx.ModelProto"
    logs: list[str]
    save_io: Path | None

    @property
    def path(self) -> Path:
        return self.result.path

    @functools.cached_property
    def inferred(self) -> tuple[dict[str, int], dict[str, list[int | str]]]:
        """(element types, shapes) of every tensor, from one strict shape inference."""
        return infer(self.model)


def opset_for(attention: str) -> int:
    return 23 if attention == "onnx-attention" else DEFAULT_OPSET


# --- module fixtures: each file exported once -------------------------------------------------
@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="module")
def source(workdir):
    """Model name -> what export_onnx takes: a preset name, or a checkpoint folder written here."""
    made: dict[str, Path] = {}

    def get(name: str) -> str | Path:
        if name not in CONFIGS:
            return name
        if name not in made:
            made[name] = save_test_checkpoint(name, workdir / "checkpoints")
        return made[name]

    return get


@pytest.fixture(scope="module")
def torch_model(source):
    return functools.lru_cache(maxsize=None)(lambda name: load_model(source(name)))


@pytest.fixture(scope="module")
def exported(workdir, source):
    cache: dict[tuple[str, str, str], Exported] = {}

    def get(name: str, precision: str = "fp32", attention: str = "decomposed") -> Exported:
        key = (name, precision, attention)
        if key not in cache:
            stem = "-".join(key)
            io_dir = workdir / f"{stem}-io" if name == "tiny" else None
            logs: list[str] = []
            result = export_onnx(source(name), workdir / f"{stem}.onnx", precision=precision, attention=attention,
                                 opset=opset_for(attention), save_io=io_dir, log=logs.append,
                                 **BATCHES.get(name, {}))
            cache[key] = Exported(result, onnx.load(str(result.path)), logs, io_dir)
        return cache[key]

    return get


def _check_validation(exp: Exported, precision: str) -> None:
    report = exp.result.validation
    assert report is not None and report.precision == precision
    spec = exp.result.spec
    assert [e.batch for e in report.errors] == spec.validation_batches()
    for batch in spec.validation_batches():  # one log line per validated batch
        assert any(re.match(rf"\s*batch\s+{batch}: max abs", line) for line in exp.logs), exp.logs
    assert np.isfinite(report.max_abs)
    print(f"MEASURED {exp.path.stem}: max abs {report.max_abs:.3e}, rel L2 {report.rel_l2:.3e}")  # -s shows it
    if precision == "fp32":
        assert report.max_abs <= FP32_MAX_ABS, report
    else:
        assert report.rel_l2 <= FP16_REL_L2, report


# --- every form x precision validates ------------------------------------------------------------
@pytest.mark.parametrize("case", slow_if_cifar(PRESET_CASES + FEATURE_CASES + DIGITS_CASES), ids=_case_id)
def test_export_validates_against_torch(exported, case):
    name, precision, attention = case
    exp = exported(*case)
    _check_validation(exp, precision)
    assert exp.path.is_file() and exp.result.size_bytes == exp.path.stat().st_size
    assert (exp.result.precision, exp.result.attention, exp.result.opset) == (precision, attention,
                                                                              opset_for(attention))
    assert not [p for p in exp.path.parent.iterdir() if ".tmp-" in p.name]


@pytest.mark.slow
@pytest.mark.parametrize("precision", PRECISIONS)
def test_ddpm_cifar10_exports_and_validates(exported, precision):
    exp = exported("ddpm-cifar10", precision)
    _check_validation(exp, precision)
    assert exp.result.spec.validation_batches() == [1, 2, 3, 4]
    assert exp.result.spec.input_shapes(1)["x_t"] == (1, 3, 32, 32)


@pytest.mark.parametrize("case", slow_if_cifar([c for c in ALL_CASES if c[0] in ("tiny", "context")]), ids=_case_id)
def test_the_output_shape_is_declared_with_numbers(exported, case):
    """`ort-mha` files declared C, H, W as names (torch's shape inference stops at the
    com.microsoft MultiHeadAttention): tools reading the graph saw unknown dims."""
    exp = exported(*case)
    dims = exp.model.graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims[:1]] == ["batch"]
    assert [d.dim_value for d in dims[1:]] == list(exp.result.spec.output_shape(1)[1:])


# --- attention forms in the graph ----------------------------------------------------------------
@pytest.mark.parametrize("case", slow_if_cifar([c for c in ALL_CASES if c[0] != "ddpm-cifar10" or c[1] == "fp32"]),
                         ids=_case_id)
def test_attention_form_ops(exported, torch_model, case):
    """One attention node per ``Attention`` module (self, cross and time-conditioning attention alike);
    the fused forms keep no Softmax."""
    name, precision, attention = case
    model = exported(*case).model
    n_attn = sum(isinstance(m, Attention) for m in torch_model(name).modules())
    assert n_attn > 0
    opsets = {o.domain: o.version for o in model.opset_import}
    mha = count_ops(model, "MultiHeadAttention", "com.microsoft")
    fused = count_ops(model, "Attention")
    softmax = count_ops(model, "Softmax")
    if attention == "decomposed":
        assert (softmax, mha, fused) == (n_attn, 0, 0)
        assert "com.microsoft" not in opsets
        return
    dims = _head_dims(torch_model(name))
    if attention == "ort-mha":
        assert (softmax, mha, fused) == (0, n_attn, 0)
        assert opsets.get("com.microsoft") == 1
        nodes = [n for n in model.graph.node if n.op_type == "MultiHeadAttention"]
        heads = {m.heads for m in torch_model(name).modules() if isinstance(m, Attention)}
        assert {_attrs(n)["num_heads"] for n in nodes} == heads
    else:
        assert (softmax, mha, fused) == (0, 0, n_attn)
        assert opsets[""] == 23
        nodes = [n for n in model.graph.node if n.op_type == "Attention"]
        assert all(_attrs(n)["softmax_precision"] == onnx.TensorProto.FLOAT for n in nodes)
    scales = sorted({_attrs(n)["scale"] for n in nodes})  # float32 attributes: equal ones dedupe exactly
    assert scales == pytest.approx(sorted(d ** -0.5 for d in dims), rel=1e-6)


def _attrs(node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _head_dims(unet) -> set[int]:
    return {m.to_q.out_features // m.heads for m in unet.modules() if isinstance(m, Attention)}


# --- decomposed form: q and k each pre-scaled by d^-1/4 -----------------------------------------
def _prescaling(exp: Exported) -> list[tuple[str, str]]:
    """For each Softmax: the MatMul that makes its logits; both of its inputs must be a Mul (k through
    a Transpose) of the q / k path by a scalar. Returns (Mul output, scalar operand) pairs."""
    model, shapes = exp.model, exp.inferred[1]
    prod = producers(model)
    found = []
    for softmax in (n for n in model.graph.node if n.op_type == "Softmax"):
        node = prod[softmax.input[0]]
        while node.op_type in ("Cast", "Add"):  # logits cast to fp32, relative position bias added
            node = next(prod[i] for i in node.input if i in prod and prod[i].op_type in ("Cast", "Add", "MatMul"))
        assert node.op_type == "MatMul", f"{softmax.name} is not fed by a MatMul but by {node.op_type}"
        for operand in node.input:
            mul = prod[operand]
            if mul.op_type == "Transpose":
                mul = prod[mul.input[0]]
            assert mul.op_type == "Mul", f"{node.name} input {operand} comes from {mul.op_type}, not a Mul"
            scalars = [i for i in mul.input if all(d == 1 for d in shapes.get(i, [0]))]
            assert len(scalars) == 1, f"{mul.name}: want one scalar operand, shapes {[shapes.get(i) for i in mul.input]}"
            found.append((mul.output[0], scalars[0]))
    assert len(found) == 2 * count_ops(model, "Softmax") > 0
    return found


def _run_with(exp: Exported, names: list[str]) -> dict[str, np.ndarray]:
    """ONNX Runtime's values of the intermediate tensors ``names`` on sample inputs (batch 1)."""
    names = sorted(set(names))
    extended = with_outputs(exp.model, names, exp.inferred[0])
    return dict(zip(names, run(extended, exp.result.spec.sample_inputs(1), names)))


PRESCALE_CASES = [(m, p) for m in ("tiny", "kitchen-sink", "context", "attention-cond") for p in PRECISIONS]


@pytest.mark.parametrize("name, precision", PRESCALE_CASES)
def test_decomposed_prescales_q_and_k_by_d_to_the_minus_quarter(exported, torch_model, name, precision):
    """Each scalar, evaluated by ONNX Runtime, is d^-1/4 for the head dim d of the tensor it scales
    (d read from the scaled tensor's run-time shape [B, h, N, d])."""
    exp = exported(name, precision)
    found = _prescaling(exp)
    values = _run_with(exp, [n for pair in found for n in pair])
    seen = set()
    for scaled, scalar in found:
        d = values[scaled].shape[-1]
        seen.add(d)
        rtol = 1e-6 if precision == "fp32" else 1e-3  # fp16 rounds d^-1/4
        assert float(values[scalar].reshape(-1)[0]) == pytest.approx(d ** -0.25, rel=rtol), scaled
    assert seen == _head_dims(torch_model(name))


@pytest.mark.parametrize("name, precision", [("tiny", "fp32"), ("kitchen-sink", "fp16")])
def test_decomposed_prescaling_is_a_constant(exported, torch_model, name, precision):
    exp = exported(name, precision)
    index = GraphIndex(exp.model)
    (d,) = _head_dims(torch_model(name))  # one head dim in these models: 32 (tiny), 8 (kitchen-sink)
    for scaled, scalar in _prescaling(exp):
        value = index.constant(scalar)
        assert value is not None, f"the scale of {scaled} ({scalar}) is computed at run time, not a constant"
        assert float(value.reshape(-1)[0]) == pytest.approx(d ** -0.25, rel=1e-3), scaled


# --- fp16 policy: time embedding in fp32, equal to the fp32 export's ----------------------------------
EMBEDDING_MODELS = ("tiny", "kitchen-sink", "learned", "class-embedding", "ddpm-cifar10")


@pytest.mark.parametrize("name", slow_if_cifar(EMBEDDING_MODELS))
def test_fp16_time_embedding_is_fp32_and_equals_the_fp32_export(exported, name):
    m16, m32 = exported(name, "fp16").model, exported(name, "fp32").model
    types16 = graph.tensor_types(m16)
    cond = exported(name, "fp16").result.spec.input_names[2:]
    boundary = []
    for input_name in ["t", *[c for c in cond if c == "class_labels"]]:
        nodes, bound = graph.embedding_subgraph(m16, input_name)
        assert nodes and bound, f"no fp32 -> fp16 boundary below {input_name}"
        assert any(n.op_type in ("Gemm", "MatMul", "Gather") for n in nodes)
        for node in nodes:
            for out in node.output:
                assert types16[out] == FLOAT, f"{node.op_type} {node.name} -> {out} is {types16[out]}, not float32"
            for inp in node.input:
                assert types16.get(inp) in (FLOAT, onnx.TensorProto.INT64, None) and types16.get(inp) != FLOAT16, \
                    f"{node.name} reads {inp} of type {types16.get(inp)}"
        boundary += bound
    boundary = sorted(set(boundary))
    types32 = graph.tensor_types(m32)
    missing = [b for b in boundary if b not in types32]
    assert not missing, f"boundary tensors {missing} not in the fp32 export"
    spec = exported(name, "fp16").result.spec
    feeds = spec.sample_inputs(2, seed=5)
    feeds["t"][:] = 937
    got16 = run(with_outputs(m16, boundary, types16), feeds, boundary)
    got32 = run(with_outputs(m32, boundary, types32), feeds, boundary)
    for b, a16, a32 in zip(boundary, got16, got32):
        assert a16.dtype == np.float32 and a32.dtype == np.float32 and a16.shape[0] == 2
        np.testing.assert_array_equal(a16, a32, err_msg=b)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_learned_time_embedding_is_a_gather_on_the_table_feeding_the_mlp(exported, torch_model, precision):
    model = exported("learned", precision).model
    table = torch_model("learned").time_embedding.table.weight.detach().numpy()
    users = consumers(model)
    gathers = [n for n in users["t"] if n.op_type == "Gather"]
    assert len(gathers) == 1, [n.op_type for n in users["t"]]
    gather = gathers[0]
    value = GraphIndex(model).constant(gather.input[0])
    assert value is not None and value.dtype == np.float32
    np.testing.assert_array_equal(value, table)  # the table itself, fp32 in both precisions
    mlp = [n.op_type for n in users[gather.output[0]]]
    assert mlp and set(mlp) <= {"Gemm", "MatMul"}, mlp
    assert exported("learned", precision).inferred[0][gather.output[0]] == FLOAT


# --- fp16 policy: fp16 weights and activations, fp32 islands ----------------------------------------
FP16_MODELS = ("tiny", "kitchen-sink", *FEATURES, "ddpm-cifar10")
NORM_OPS = ("InstanceNormalization", "BatchNormalization", "GroupNormalization", "LayerNormalization")


@pytest.mark.parametrize("name", slow_if_cifar(FP16_MODELS))
def test_fp16_graph_is_explicitly_mixed_precision(exported, name):
    model = exported(name, "fp16").model
    types, index = exported(name, "fp16").inferred[0], GraphIndex(model)
    io = {vi.name: vi.type.tensor_type.elem_type for vi in [*model.graph.input, *model.graph.output]}
    assert io["x_t"] == FLOAT and io["t"] == onnx.TensorProto.INT64 and io["model_output"] == FLOAT
    # every convolution runs in fp16 on fp16 weights
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert convs
    for conv in convs:
        assert index.initializer_type(conv.input[1]) == FLOAT16, conv.name
        assert types[conv.input[0]] == FLOAT16 and types[conv.output[0]] == FLOAT16, conv.name
    # normalization statistics, softmax and sinusoids in fp32
    islands = [n for n in model.graph.node if n.op_type in (*NORM_OPS, "Softmax", "Sin", "Cos")]
    assert any(n.op_type in NORM_OPS for n in islands)
    for node in islands:
        assert types[node.output[0]] == FLOAT, f"{node.op_type} {node.name} computes in {types[node.output[0]]}"
    # the norms' affine parameters are fp32 initializers (read by the norm node or the Mul/Add after it)
    norm_params = 0
    for node in model.graph.node:
        if "/norm" in node.name and node.op_type in (*NORM_OPS, "Mul", "Add"):
            for inp in node.input:
                dtype = index.initializer_type(inp)
                if dtype is not None:
                    assert dtype == FLOAT, f"{node.name} reads {inp} as {dtype}"
                    norm_params += 1
    assert norm_params > 0
    # and most of the weights are fp16 indeed
    sizes = {FLOAT: 0, FLOAT16: 0}
    for init in model.graph.initializer:
        if init.data_type in sizes:
            sizes[init.data_type] += int(np.prod(init.dims))
    assert sizes[FLOAT16] > sizes[FLOAT], sizes


# --- metadata -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, precision, attention", [("tiny", "fp32", "decomposed"),
                                                        pytest.param("kitchen-sink", "fp16", "onnx-attention",
                                                                     marks=pytest.mark.slow),
                                                        ("learned", "fp16", "decomposed")])
def test_metadata_describes_the_export(exported, torch_model, source, name, precision, attention):
    exp = exported(name, precision, attention)
    props = md.read_metadata(exp.model)
    assert set(md.REQUIRED) <= set(props)
    assert UNetConfig.from_json(props[md.UNET_CONFIG]) == torch_model(name).config
    # the checkpoint's diffusion.json when it has one (learned), else the default schedule
    assert DiffusionConfig.from_json(props[md.DIFFUSION_CONFIG]) == DiffusionConfig(**DIFFUSION.get(name, {}))
    assert ExportSpec.from_json(props[md.EXPORT_SPEC]) == exp.result.spec
    pol = json.loads(props[md.PRECISION_POLICY])
    assert pol["precision"] == precision and pol["io_dtype"] == "float32"
    assert pol["compute_dtype"] == {"fp32": "float32", "fp16": "float16"}[precision]
    if precision == "fp16":
        assert {"time_embedding", "normalization_statistics"} <= set(pol["fp32_islands"])
        # the fused ort-mha takes its bias in fp16 and runs in fp16; the metadata claimed a softmax island
        assert ("attention_bias_and_softmax" in pol["fp32_islands"]) == (attention == "decomposed")
        assert ("attention_softmax" in pol["fp32_islands"]) == (attention == "onnx-attention")
    else:
        assert pol["fp32_islands"] == []
    assert props[md.ATTENTION] == attention
    version = props[md.EXPORTER_VERSION]
    assert __version__ in version and torch.__version__.split("+")[0] in version and onnx.__version__ in version
    src = source(name)
    if isinstance(src, Path):  # a checkpoint folder: the hash of its weights file
        digest = hashlib.sha256((src / WEIGHTS_NAME).read_bytes()).hexdigest()
        assert props[md.SOURCE] == WEIGHTS_NAME
    else:  # a seed-initialised preset: the hash of its weights serialised as safetensors
        state = {k: v.detach().contiguous() for k, v in torch_model(name).state_dict().items()}
        digest = hashlib.sha256(safetensors_save(state)).hexdigest()
        assert props[md.SOURCE] == name
    assert props[md.SOURCE_SHA256] == digest
    assert props[md.SOURCE_TENSORS_SHA256] == tensors_sha256(torch_model(name).state_dict())  # recipe: test_verify
    assert exp.model.producer_name == "ddpm-export"


def test_the_source_of_a_folder_without_weights_is_its_name_not_the_path_as_typed(source, tmp_path, monkeypatch):
    """docs/metadata.md: a file name or a name, never the exporter's path (it leaked a home folder
    into a file meant to be shared); the digest is of the seed-initialised state dict."""
    folder = tmp_path / "home" / "me" / "my-unet"
    folder.mkdir(parents=True)
    shutil.copyfile(source("micro") / "config.json", folder / "config.json")
    monkeypatch.chdir(folder)
    with pytest.warns(Warning, match="seed-initialised"):
        state = {k: v.detach().contiguous() for k, v in load_model(folder).state_dict().items()}
    for typed in (str(folder), "."):
        with pytest.warns(Warning, match="seed-initialised"):
            result = export_onnx(typed, tmp_path / f"m{len(typed)}.onnx", validate=False, log=lambda s: None)
        props = md.read_metadata(onnx.load(str(result.path)))
        assert props[md.SOURCE] == "my-unet"
        assert props[md.SOURCE_SHA256] == hashlib.sha256(safetensors_save(state)).hexdigest()


def test_read_metadata_names_missing_keys(exported):
    model = onnx.ModelProto()
    model.CopyFrom(exported("tiny").model)
    del model.metadata_props[:]
    with pytest.raises(ValueError, match="unet_config"):
        md.read_metadata(model)


# --- writing the file -------------------------------------------------------------------------------
def test_exporting_twice_gives_byte_identical_files(exported, tmp_path):
    first = exported("tiny", "fp16")
    again = export_onnx("tiny", tmp_path / "again.onnx", precision="fp16", log=lambda s: None)
    assert again.path.read_bytes() == first.path.read_bytes()


def test_existing_file_is_refused_and_left_untouched(exported, tmp_path):
    target = tmp_path / "model.onnx"
    shutil.copyfile(exported("tiny").path, target)
    before, mtime = target.read_bytes(), target.stat().st_mtime_ns
    with pytest.raises(FileExistsError, match="model.onnx"):
        export_onnx("tiny", target, precision="fp16", log=lambda s: None)
    assert target.read_bytes() == before and target.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_force_overwrites(source, tmp_path):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"not an onnx file")
    result = export_onnx(source("micro"), target, force=True, log=lambda s: None)
    assert result.validation is not None
    assert onnx.load(str(target)).graph.input[0].name == "x_t"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def _impossible_tolerance(monkeypatch) -> None:
    """export_onnx takes no tolerance and binds validate_onnx's defaults at import, so patching
    validate.FP32_MAX_ABS has no effect: wrap the function it calls instead."""
    monkeypatch.setattr(onnx_export, "validate_onnx",
                        functools.partial(validate_mod.validate_onnx, max_abs=0.0, rel_l2=0.0))


def test_failed_validation_writes_nothing(source, tmp_path, monkeypatch):
    """The message names the file asked for (not the temp copy validated) and how to write it anyway."""
    _impossible_tolerance(monkeypatch)
    out = tmp_path / "model.onnx"
    with pytest.raises(ValidationError) as caught:
        export_onnx(source("micro"), out, log=lambda s: None)
    assert str(caught.value).startswith(f"{out}: fp32 max abs error ")
    assert " exceeds 0.0e+00" in str(caught.value)
    assert "; nothing was written (validate=False, `ddpm-export onnx --no-validate`, " in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def _scaled_copy(source, name: str, factor: float, root: Path) -> Path:
    """``name``'s checkpoint with its last convolution (and so its outputs) scaled by ``factor``."""
    import torch

    from ddpm_export.nn.checkpoint import save_checkpoint

    unet = load_model(source(name))
    last = [m for m in unet.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        last.weight.mul_(factor)
        last.bias.mul_(factor)
    save_checkpoint(unet, root / f"{name}-x{factor:g}")
    return root / f"{name}-x{factor:g}"


def test_fp32_limit_scales_with_the_output(source, tmp_path):
    """float32 errors grow with the values: outputs 1000x larger than unit scale are held to a max
    abs limit 1000x larger (their RMS, computed here from the torch outputs), the same relative
    precision; below RMS 1 the limit is the plain 1e-4. A limit the error misses names the scale."""
    from ddpm_export.metrics import FP32_MAX_ABS

    folder = _scaled_copy(source, "micro", 1000.0, tmp_path)
    result = export_onnx(folder, tmp_path / "big.onnx", log=lambda s: None)
    unet, spec = load_model(folder), result.spec
    for err in result.validation.errors:
        want = validate_mod.torch_reference(unet, spec, spec.sample_inputs(err.batch, seed=err.batch))
        rms = float(np.sqrt(np.mean(want.astype(np.float64) ** 2)))
        assert rms > 100 and err.scale == pytest.approx(rms, rel=1e-9)
        assert err.max_abs <= FP32_MAX_ABS * err.scale and err.rel_l2 < 1e-5
    with pytest.raises(ValidationError, match=r"exceeds [0-9.e+-]+ \(1\.0e-09 x the output's RMS [0-9.]+\)$"):
        validate_mod.validate_onnx(result.path, unet, spec, "fp32", max_abs=1e-9, log=lambda s: None)


def test_output_scale_is_the_largest_rms_at_least_one():
    from ddpm_export.metrics import output_scale

    assert output_scale(np.full((2, 3), 0.5, np.float32)) == 1.0
    assert output_scale(np.array([3.0, -4.0]), np.full(4, 2.0)) == pytest.approx(np.sqrt(12.5))
    assert output_scale(np.array([np.inf, 1.0])) == 1.0  # a non-finite output fails elsewhere


def test_failed_validation_keeps_the_forced_file(source, tmp_path, monkeypatch):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"previous export")
    _impossible_tolerance(monkeypatch)
    with pytest.raises(ValidationError):
        export_onnx(source("micro"), target, precision="fp16", force=True, log=lambda s: None)
    assert target.read_bytes() == b"previous export"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_external_data_above_the_threshold(source, tmp_path, monkeypatch):
    """Only the threshold logic (no 2 GB model): above it, weights go to <name>.onnx.data beside the file."""
    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_THRESHOLD", 0)
    result = export_onnx(source("micro"), tmp_path / "model.onnx", log=lambda s: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.data"]
    data = tmp_path / "model.onnx.data"
    assert result.data_path == data and result.size_bytes == result.path.stat().st_size + data.stat().st_size
    umask = os.umask(0o022)
    os.umask(umask)
    # readable where the graph is (a server running as another user): onnx wrote the data 0600
    assert oct(data.stat().st_mode & 0o777) == oct(result.path.stat().st_mode & 0o777) == oct(0o666 & ~umask)
    assert result.validation is not None and result.validation.max_abs <= FP32_MAX_ABS
    model = onnx.load(str(result.path), load_external_data=False)
    assert any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer)
    feeds = result.spec.sample_inputs(2)
    assert run(result.path, feeds)[0].shape == result.spec.output_shape(2)


def test_force_without_external_data_removes_the_replaced_files_data(source, tmp_path, monkeypatch):
    """--force over a file written with external data, by a graph that holds its weights: the old
    <name>.onnx.data went stale beside it; now removed, as the file that named it is replaced."""
    with monkeypatch.context() as patch:
        patch.setattr(onnx_export, "EXTERNAL_DATA_THRESHOLD", 0)
        export_onnx(source("micro"), tmp_path / "model.onnx", log=lambda s: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.data"]
    result = export_onnx(source("micro"), tmp_path / "model.onnx", force=True, log=lambda s: None)
    assert result.data_path is None and sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    assert run(result.path, result.spec.sample_inputs(2))[0].shape == result.spec.output_shape(2)


def test_force_keeps_a_data_file_the_replaced_file_did_not_name(source, tmp_path):
    """Only the replaced file's own external data goes: a <name>.onnx.data beside a file that keeps
    its weights (or that is no ONNX file) is someone else's."""
    (tmp_path / "model.onnx").write_bytes(b"not an onnx file")
    (tmp_path / "model.onnx.data").write_bytes(b"someone's weights")
    export_onnx(source("micro"), tmp_path / "model.onnx", force=True, log=lambda s: None)
    export_onnx(source("micro"), tmp_path / "model.onnx", force=True, log=lambda s: None)  # over an ONNX file
    assert (tmp_path / "model.onnx.data").read_bytes() == b"someone's weights"


def _available_memory() -> int:
    """MemAvailable from /proc/meminfo in bytes (0 where there is none)."""
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return 0
    match = re.search(r"^MemAvailable:\s+(\d+) kB", text, re.M)
    return int(match.group(1)) * 1024 if match else 0


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("DDPM_EXPORT_TEST_2GB") != "1",
                    reason="set DDPM_EXPORT_TEST_2GB=1: 85 s, 2.3 GB on disk and ~15 GB of memory, past CI's budget")
@pytest.mark.skipif(_available_memory() < 18 * 2**30, reason="a 2.3 GB model in torch, ONNX and ONNX Runtime")
def test_a_model_over_2gb_is_written_with_external_data(tmp_path):
    """The README's "models over 2 GB use external data", with a real one (571 M parameters, 8x8
    images): the exporter traced into a buffer, which torch refuses over protobuf's limit
    (RuntimeError 'larger than the 2GiB limit', a traceback and exit 1); and shape inference
    then serialised the whole model, which fails over 2 GB too."""
    folder = tmp_path / "big"
    folder.mkdir()
    cfg = dataclasses.replace(UNetConfig.load(preset_dir("ddpm-cifar10") / "config.json"), base_channels=512,
                              sample_size=8, attention_resolutions=(4,), zero_init=False)  # zero weights: deduplicated
    (folder / "config.json").write_text(cfg.to_json())
    assert 4 * sum(p.numel() for p in meta_model(cfg).parameters()) > onnx_export.EXTERNAL_DATA_THRESHOLD
    with pytest.warns(Warning, match="seed-initialised"):
        result = export_onnx(folder, tmp_path / "out" / "big.onnx", rewrites="none", max_batch=1, log=lambda s: None)
    data = tmp_path / "out" / "big.onnx.data"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["big.onnx", "big.onnx.data"]
    assert result.data_path == data and data.stat().st_size > onnx_export.EXTERNAL_DATA_THRESHOLD
    assert result.size_bytes == result.path.stat().st_size + data.stat().st_size
    assert result.validation is not None and result.validation.max_abs <= FP32_MAX_ABS


def test_failed_validation_with_external_data_writes_nothing(source, tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_THRESHOLD", 0)
    _impossible_tolerance(monkeypatch)
    with pytest.raises(ValidationError):
        export_onnx(source("micro"), tmp_path / "model.onnx", log=lambda s: None)
    assert list(tmp_path.iterdir()) == []


def test_existing_save_io_files_are_refused_before_anything_is_written(source, tmp_path):
    io_dir = tmp_path / "io"
    io_dir.mkdir()
    (io_dir / "inputs.json").write_text("[]")
    with pytest.raises(FileExistsError, match="inputs.json"):
        export_onnx(source("micro"), tmp_path / "model.onnx", save_io=io_dir, log=lambda s: None)
    assert not (tmp_path / "model.onnx").exists()
    assert (io_dir / "inputs.json").read_text() == "[]"


# --- refused options --------------------------------------------------------------------------------
def test_onnx_attention_needs_opset_23(tmp_path):
    with pytest.raises(ValueError, match=r"onnx-attention needs --opset >= 23, got 20"):
        export_onnx("tiny", tmp_path / "m.onnx", attention="onnx-attention", opset=20)
    assert list(tmp_path.iterdir()) == []


def test_opset_above_the_exporters_is_refused_before_any_work(tmp_path):
    """The CLI stops at 23; the Python API traced the model, printed its whole TorchScript graph
    and raised RuntimeError 'Unsupported onnx_opset_version: 24'."""
    with pytest.raises(ValueError, match=r"--opset 24 is above 23, the highest opset the exporter writes"):
        export_onnx("tiny", tmp_path / "m.onnx", opset=24, log=lambda s: None)
    assert list(tmp_path.iterdir()) == []


def test_ort_mha_is_refused_for_tensorrt(tmp_path):
    """A contrib op TensorRT's parser cannot take: the file would fail at `ddpm-export trt`."""
    with pytest.raises(ValueError, match=r"ort-mha is ONNX Runtime's contrib op .* --target tensorrt choose "
                                         r"decomposed or onnx-attention"):
        export_onnx("kitchen-sink", tmp_path / "m.onnx", attention="ort-mha", target="tensorrt")
    assert list(tmp_path.iterdir()) == []


def test_int8_for_tensorrt_above_opset_20_is_refused_before_any_work(tmp_path):
    """ONNX Runtime failed on the calibrated file with a traceback (exit 1); and onnx-attention,
    which the ort-mha refusal names for TensorRT, needs opset 23, so it cannot be int8 there."""
    with pytest.raises(ValueError, match=r"int8 for --target tensorrt needs --opset <= 20, got 21: ONNX Runtime"):
        export_onnx("digits", tmp_path / "m.onnx", precision="int8", target="tensorrt", opset=21)
    with pytest.raises(ValueError, match=r"got 23: .*; and --attention onnx-attention needs opset 23: use decomposed"):
        export_onnx("digits", tmp_path / "m.onnx", precision="int8", target="tensorrt", opset=23,
                    attention="onnx-attention")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs, choices", [
    (dict(precision="fp8"), "fp32, fp16, int8"),  # int8: ddpm_export.export.int8
    (dict(attention="flash"), "auto, decomposed, ort-mha, onnx-attention"),
    (dict(target="cuda"), "any, onnxruntime, openvino, tensorrt"),
])
def test_bad_options_are_refused_listing_the_choices(tmp_path, kwargs, choices):
    (key, value), = kwargs.items()
    with pytest.raises(ValueError) as info:
        export_onnx("tiny", tmp_path / "m.onnx", **kwargs)
    assert repr(value) in str(info.value) and choices in str(info.value) and key in str(info.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_a_calibration_for_a_float_export_is_refused_before_any_work(tmp_path, precision):
    """calibration= was silently ignored by a float export (it calibrates nothing)."""
    from ddpm_export.errors import BadInputError
    from ddpm_export.export.int8 import CalibrationConfig

    logs: list[str] = []
    with pytest.raises(BadInputError, match=rf"^calibration applies to precision='int8' only, got "
                                            rf"precision='{precision}'; leave it out \(None\) or export int8$"):
        export_onnx("tiny", tmp_path / "m.onnx", precision=precision, calibration=CalibrationConfig(), log=logs.append)
    assert logs == [] and list(tmp_path.iterdir()) == []


def test_output_must_end_in_onnx(tmp_path):
    with pytest.raises(ValueError, match=r"\.onnx"):
        export_onnx("tiny", tmp_path / "model.bin")


def test_bad_batch_range_is_refused(source, tmp_path):
    with pytest.raises(ValueError, match="min_batch/opt_batch/max_batch"):
        export_onnx(source("micro"), tmp_path / "m.onnx", min_batch=4, opt_batch=2, max_batch=8)
    assert list(tmp_path.iterdir()) == []


# auto follows the measured table AUTO_ATTENTION (attention_forms.py): on ONNX Runtime's CPU provider the
# decomposed form measured as fast or faster than ort-mha and onnx-attention (ddpm-export bench, README "Speed")
@pytest.mark.parametrize("target, form", [("onnxruntime", "decomposed"), ("tensorrt", "decomposed"), ("any", "decomposed")])
def test_auto_attention_picks_per_target(source, tmp_path, target, form):
    result = export_onnx(source("micro"), tmp_path / "m.onnx", attention="auto", target=target, log=lambda s: None)
    assert result.attention == form
    model = onnx.load(str(result.path))
    assert md.read_metadata(model)[md.ATTENTION] == form
    assert count_ops(model, "MultiHeadAttention", "com.microsoft") == (1 if form == "ort-mha" else 0)


# --- dynamic axes ----------------------------------------------------------------------------------
def test_dynamic_batch_runs_at_min_and_max_and_the_spec_refuses_beyond(exported, torch_model):
    exp = exported("tiny")
    spec = ExportSpec.from_json(md.read_metadata(exp.model)[md.EXPORT_SPEC])
    unet = torch_model("tiny")
    for batch in (spec.min_batch, spec.max_batch):
        feeds = spec.sample_inputs(batch, seed=11)
        spec.check_inputs(feeds)
        got = run(exp.path, feeds)[0]
        assert got.shape == spec.output_shape(batch)
        assert max_abs(got, validate_mod.torch_reference(unet, spec, feeds)) <= FP32_MAX_ABS
    with pytest.raises(ValueError, match=rf"x_t: batch {spec.max_batch + 1} is outside"):
        spec.check_inputs(spec.sample_inputs(spec.max_batch + 1))


@pytest.mark.parametrize("precision, attention", [("fp32", "decomposed"),
                                                  pytest.param("fp32", "ort-mha", marks=pytest.mark.slow),
                                                  pytest.param("fp16", "onnx-attention", marks=pytest.mark.slow)])
def test_dynamic_context_length(exported, torch_model, precision, attention):
    exp = exported("context", precision, attention)
    spec, unet = exp.result.spec, torch_model("context")
    for length in (spec.min_context, 3, spec.max_context):
        feeds = spec.sample_inputs(2, seed=length, context_length=length)
        spec.check_inputs(feeds)
        got, want = run(exp.path, feeds)[0], validate_mod.torch_reference(unet, spec, feeds)
        if precision == "fp32":
            assert max_abs(got, want) <= FP32_MAX_ABS, length
        else:
            assert rel_l2(got, want) <= FP16_REL_L2, length


# --- Polygraphy ------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("precision, tolerances", [("fp32", ["--atol", "0.0001"]),
                                                   ("fp16", ["--check-error-stat", "mean", "--atol"])])
def test_polygraphy_run_compares_with_the_saved_torch_io(exported, precision, tolerances):
    """The printed command passes as printed: fp32 held to the export's max abs limit, fp16 to
    the mean abs error its relative L2 limit allows (the command printed for an fp16 file failed:
    Polygraphy's default elementwise 1e-5 is fp32's, and the tolerances were left to the user)."""
    exp = exported("tiny", precision)
    assert exp.save_io is not None
    inputs, outputs = exp.save_io / "inputs.json", exp.save_io / "outputs.json"
    assert inputs.is_file() and outputs.is_file()
    # the export printed the command (polygraphy's own log lines, naming temp files, kept quiet)
    printed = [line.split(" for polygraphy: ", 1)[1] for line in exp.logs if " for polygraphy: " in line]
    assert len(printed) == 1, exp.logs
    args = shlex.split(printed[0])
    assert args[:8] == ["polygraphy", "run", str(exp.path), "--onnxrt", "--load-inputs", str(inputs),
                        "--load-outputs", str(outputs)]
    assert args[8:8 + len(tolerances)] == tolerances, args
    exe = shutil.which("polygraphy")
    cmd = ([exe] if exe else [sys.executable, "-m", "polygraphy"]) + args[1:]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False, env=env)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "PASSED" in log


def test_polygraphy_tolerances_are_the_exports_limits():
    """fp32: FP32_MAX_ABS elementwise, times the output's RMS above 1; fp16 / int8: a mean abs error of
    the relative L2 limit (4e-3, 5e-2) times the reference's RMS (a constant 2 has RMS 2)."""
    from ddpm_export.export.polygraphy_io import polygraphy_tolerances

    assert polygraphy_tolerances("fp32", np.full((2, 3), 0.5, np.float32)) == ["--atol", "0.0001"]
    assert polygraphy_tolerances("fp32", np.array([3.0, -3.0], np.float32)) == ["--atol", "0.0003"]
    assert polygraphy_tolerances("fp16", np.full((4,), -2.0, np.float32)) == ["--check-error-stat", "mean",
                                                                              "--atol", "0.008"]
    assert polygraphy_tolerances("int8", np.array([3.0, 4.0], np.float32))[-1] == f"{0.05 * np.sqrt(12.5):.3g}"


def test_validation_runs_onnx_runtime_with_the_commands_threads(exported, monkeypatch):
    """`ddpm-export --threads N onnx ...` set torch's threads and every runtime session's, but
    validation's session took ONNX Runtime's default (a thread per core)."""
    from ddpm_export.threads import set_threads

    path, torch_threads = exported("tiny").path, torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))  # set_threads sets it
    try:
        set_threads(3)
        options = validate_mod.validation_session(path, path).get_session_options()
        assert (options.intra_op_num_threads, options.inter_op_num_threads) == (3, 1)
    finally:
        set_threads(None)
        torch.set_num_threads(torch_threads)
    assert validate_mod.validation_session(path, path).get_session_options().intra_op_num_threads == 0  # default


def test_a_file_nan_at_a_later_batch_fails_validation(tmp_path):
    """An fp16 export NaN at batches 8 and 16 only read 'validation passed' and was written (Python's
    max over the batches drops a NaN that is not first). Here a real graph edit: the output plus
    0 * log(3 - B), finite at batches 1 and 2, NaN above."""
    from onnx import TensorProto, helper

    result = export_onnx("tiny", tmp_path / "t.onnx", max_batch=8, opt_batch=2, log=lambda s: None)
    model = onnx.load(str(result.path))
    out = model.graph.output[0].name
    nodes = [helper.make_node("Shape", ["x_t"], ["b_shape"], start=0, end=1),
             helper.make_node("Cast", ["b_shape"], ["b"], to=TensorProto.FLOAT),
             helper.make_node("Constant", [], ["three"],
                              value=helper.make_tensor("three", TensorProto.FLOAT, [], [3.0])),
             helper.make_node("Sub", ["three", "b"], ["d"]), helper.make_node("Log", ["d"], ["log_d"]),
             helper.make_node("Constant", [], ["zero"],
                              value=helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])),
             helper.make_node("Mul", ["log_d", "zero"], ["nan_or_0"])]
    for node in model.graph.node:  # the last node writes the output: rename, then add the NaN term
        node.output[:] = [name if name != out else "pre_out" for name in node.output]
    model.graph.node.extend([*nodes, helper.make_node("Add", ["pre_out", "nan_or_0"], [out])])
    onnx.save(model, str(tmp_path / "nan.onnx"))
    spec, unet = result.spec, load_model("tiny")
    assert spec.validation_batches()[:2] == [1, 2] and max(spec.validation_batches()) > 3
    with pytest.raises(ValidationError, match=r"batch [4-8]: \d+ of \d+ outputs from ONNX Runtime are NaN"):
        validate_mod.validate_onnx(tmp_path / "nan.onnx", unet, spec, "fp32", log=lambda s: None)


def test_the_relative_error_of_outputs_past_float32s_norm_is_not_zero():
    """errors() took the reference's norm in float32: for outputs near 1e38 the sum of squares was
    inf, so the relative L2 read 0 ('validation passed: max abs 2.0e+32, rel L2 0.000e+00')."""
    from ddpm_export.metrics import errors

    expected = np.full(16, 1e37, dtype=np.float32)
    actual = expected * np.float32(1.01)
    max_abs, rel = errors(actual, expected)
    assert rel == pytest.approx(0.01, rel=1e-5) and max_abs == pytest.approx(1e35, rel=1e-5)
