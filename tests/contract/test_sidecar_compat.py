"""Where an engine may run, from its sidecar (contract.sidecar): TensorRT's version and hardware compatibility rules."""

from __future__ import annotations

import pytest

from ddpm_export.contract.sidecar import EngineMismatchError, check_sidecar, needs_host_code

H200 = {"name": "NVIDIA H200", "compute_capability": "9.0"}


def side(**kw):
    return {"onnx_sha256": "0" * 64, "tensorrt_version": "10.8.0.43", "gpu": H200, **kw}


@pytest.mark.parametrize("sidecar, trt, cc, match", [
    (side(), "10.8.0.43", "9.0", None),
    (side(), "10.9.0.34", "9.0", "built by TensorRT 10.8.0.43, this is TensorRT 10.9.0.34"),
    (side(version_compatible=True), "10.9.0.34", "9.0", None),
    (side(version_compatible=True), "10.7.0.23", "9.0", "later 10.x and 11.x releases only"),
    (side(version_compatible=True), "11.0.0.1", "9.0", None),  # TensorRT's support matrix: 10 -> 11
    (side(version_compatible=True), "12.0.0.1", "9.0", "later 10.x and 11.x releases only"),
    (side(version_compatible=True, tensorrt_version="11.1.0"), "11.0.0.1", "9.0", "later 11.x releases only"),
    (side(), "10.8.0.43", "8.9", "compute capability 9.0 \\(NVIDIA H200\\), this GPU has 8.9"),
    (side(hardware_compatibility="same-compute-capability"), "10.8.0.43", "9.0", None),
    (side(hardware_compatibility="same-compute-capability"), "10.8.0.43", "8.6", "this GPU has 8.6"),
    (side(hardware_compatibility="ampere+"), "10.8.0.43", "8.6", None),
    (side(hardware_compatibility="ampere+"), "10.8.0.43", "10.0", None),
    (side(hardware_compatibility="ampere+"), "10.8.0.43", "7.5", "compute capability >= 8.0"),
    (side(hardware_compatibility="volta+"), "10.8.0.43", "9.0", "unknown hardware_compatibility"),
    (side(), "10.8.0.43", None, None),  # GPU unknown: only the version is checked
    ({"onnx_sha256": "0" * 64, "gpu": {"name": "unknown"}}, "10.8.0.43", "9.0", None),  # an old sidecar
], ids=["same", "other-version", "vc-later", "vc-earlier", "vc-next-major", "vc-major-after-next",
        "vc-11-earlier", "other-gpu", "same-cc", "same-cc-other",
        "ampere-86", "ampere-100", "ampere-turing", "bad-level", "gpu-unknown", "old-sidecar"])
def test_rules(sidecar, trt, cc, match):
    if match is None:
        check_sidecar("m.plan", sidecar, onnx_sha256=None, tensorrt_version=trt, compute_capability=cc)
    else:
        with pytest.raises(EngineMismatchError, match=match):
            check_sidecar("m.plan", sidecar, onnx_sha256=None, tensorrt_version=trt, compute_capability=cc)


def test_version_compatible_engines_need_host_code_allowed():
    assert needs_host_code(side(version_compatible=True)) and not needs_host_code(side())


def test_the_fp32_file_an_fp16_engine_was_converted_from_names_the_graph_to_use(tmp_path):
    """`trt --onnx m.onnx --fp16 -o e.plan` builds from e.plan.onnx; given m.onnx (verify --onnx m.onnx
    --engine e.plan), the error said "rebuild the engine from this ONNX file"; it names e.plan.onnx."""
    from ddpm_export.contract.sidecar import sidecar_text
    from ddpm_export.contract.spec import ExportSpec
    from ddpm_export.runtime.tensorrt import TensorRTBackend

    converted = side(onnx_sha256="1" * 64, converted_from={"onnx_file": "m.onnx", "onnx_sha256": "2" * 64})
    engine = tmp_path / "e.plan"
    with pytest.raises(EngineMismatchError, match=r"e\.plan: built from e\.plan\.onnx, the fp16 graph `trt --fp16` "
                                                  r"converted from this ONNX file \(m\.onnx\): use that graph .*"
                                                  r"\(--onnx .*e\.plan\.onnx\)"):
        check_sidecar(engine, converted, onnx_sha256="2" * 64, tensorrt_version=None)
    with pytest.raises(EngineMismatchError, match="rebuild the engine from this ONNX file"):  # another file
        check_sidecar(engine, converted, onnx_sha256="3" * 64, tensorrt_version=None)
    check_sidecar(engine, converted, onnx_sha256="1" * 64, tensorrt_version=None)  # the graph itself
    engine.write_bytes(b"not an engine")  # refused before TensorRT, CUDA or the engine's bytes are touched
    (tmp_path / "e.plan.json").write_text(sidecar_text(converted), encoding="utf-8")
    with pytest.raises(EngineMismatchError, match="use that graph with the engine"):
        TensorRTBackend(engine, ExportSpec(), onnx_sha256="2" * 64)


@pytest.mark.parametrize("field, value", [
    ("gpu", "NVIDIA H200"), ("profile", {"x_t": [1, 16]}), ("profile", {"x_t": {"max": [16, 3, 8, 8]}}),
    ("profile", {"x_t": {"min": [], "opt": [4], "max": [16]}}), ("version_compatible", "no"),
    ("tensorrt_version", 10), ("onnx_file", 5),
], ids=["gpu-a-string", "profile-a-list", "profile-without-min", "profile-empty-min", "vc-a-string",
        "version-a-number", "onnx-file-a-number"])
def test_a_sidecar_field_of_the_wrong_type_is_refused_when_read(tmp_path, field, value):
    """A hand-edited or foreign sidecar: the GPU check (`.get` of a str) and inspect's batch check
    (`profile["min"][0]`) failed with Python's traceback; now read_sidecar names the field."""
    import json

    from ddpm_export.contract.sidecar import read_sidecar
    from ddpm_export.errors import IntegrityError

    engine = tmp_path / "m.plan"
    engine.write_bytes(b"not an engine")
    good = side(profile={"x_t": {"min": [1, 3, 8, 8], "opt": [4, 3, 8, 8], "max": [16, 3, 8, 8]}})
    (tmp_path / "m.plan.json").write_text(json.dumps(good), encoding="utf-8")
    assert read_sidecar(engine) == good
    (tmp_path / "m.plan.json").write_text(json.dumps(side(**{field: value})), encoding="utf-8")
    with pytest.raises(IntegrityError, match=rf"m\.plan\.json: '{field}' not as `ddpm-export trt` writes it"):
        read_sidecar(engine)
    pytest.importorskip("torch")  # inspect's module
    from ddpm_export.analysis.trt_profile import check_engine

    with pytest.raises(IntegrityError, match=rf"'{field}'"):
        check_engine(engine, batch=1)
