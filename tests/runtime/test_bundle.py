"""Bundles (``ddpm_export.runtime.bundle`` and ``ddpm-export bundle``) on a real export of ``tiny``:
the manifest's fields, hash checks before loading (a tampered byte, a missing file), engines and
their sidecars, atomic writing, and the TensorRT backend's refusals without TensorRT."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("torch", reason="the export needs torch")
pytest.importorskip("onnx")

from ddpm_export.cli import main  # noqa: E402
from ddpm_export.errors import InputNotFoundError, MissingDependencyError, NotAFolderError  # noqa: E402
from ddpm_export.runtime import BundleError, Pipeline, make_bundle, read_info, verify_bundle  # noqa: E402
from ddpm_export.runtime.bundle import MANIFEST  # noqa: E402
from ddpm_export.runtime.tensorrt import EngineMismatchError, TensorRTBackend, sidecar_path  # noqa: E402

from runtime_exports import exported  # noqa: E402


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return exported("tiny", tmp_path_factory)


@pytest.fixture(scope="module")
def engine(onnx_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stand-in engine file (bytes only: bundling never deserialises it) with a valid sidecar."""
    path = tmp_path_factory.mktemp("engine") / "tiny.plan"
    path.write_bytes(b"not really an engine")
    sidecar_path(path).write_text(json.dumps({"onnx_sha256": _sha(onnx_file), "tensorrt_version": "10.0.0"}))
    return path


@pytest.fixture()
def bundle(onnx_file: Path, tmp_path: Path) -> Path:
    return make_bundle([onnx_file], tmp_path / "bundle")


def test_manifest_lists_every_file_with_its_hash_schedule_and_sampler_defaults(onnx_file: Path, bundle: Path) -> None:
    manifest = json.loads((bundle / MANIFEST).read_text())
    info = read_info(onnx_file)
    assert manifest["format"] == "ddpm-export-bundle" and manifest["version"] == 1
    assert sorted(p.name for p in bundle.iterdir()) == sorted([MANIFEST, "tiny.onnx"])
    [entry] = manifest["files"]
    assert entry == {"path": "tiny.onnx", "sha256": _sha(onnx_file), "size": onnx_file.stat().st_size, "role": "onnx"}
    assert _sha(bundle / "tiny.onnx") == entry["sha256"]
    assert manifest["diffusion"] == info.diffusion.to_dict()
    assert manifest["sampler_defaults"] == {"sampler": "ddim", "num_inference_steps": 50, "eta": 0.0}
    [model] = manifest["models"]
    assert model["onnx"] == "tiny.onnx" and model["precision"] == "fp32" and model["engines"] == []
    assert model["metadata"] == dict(info.metadata)


def test_bundle_pipeline_samples_like_the_onnx_file(onnx_file: Path, bundle: Path) -> None:
    a = Pipeline.from_bundle(bundle).sample(2, steps=3, progress=False)
    np.testing.assert_array_equal(a, Pipeline.from_onnx(onnx_file).sample(2, steps=3, progress=False))


def test_a_tampered_byte_is_refused_naming_the_file(bundle: Path) -> None:
    path = bundle / "tiny.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"tiny\.onnx: sha256 [0-9a-f]{64} does not match manifest\.json"):
        Pipeline.from_bundle(bundle)


def test_a_missing_file_is_refused_naming_the_file(bundle: Path) -> None:
    (bundle / "tiny.onnx").unlink()
    with pytest.raises(BundleError, match=r"tiny\.onnx: missing; manifest\.json lists it"):
        verify_bundle(bundle)
    os.mkfifo(bundle / "tiny.onnx")  # something in its place: not "missing"
    with pytest.raises(BundleError, match=r"tiny\.onnx: not a regular file; manifest\.json lists it"):
        verify_bundle(bundle)


def test_a_folder_in_the_manifests_place_is_not_a_missing_manifest(tmp_path: Path) -> None:
    (tmp_path / "b" / MANIFEST).mkdir(parents=True)  # was "manifest.json: missing"
    with pytest.raises(BundleError, match=r"b/manifest\.json: not a regular file; a bundle folder holds a manifest"):
        verify_bundle(tmp_path / "b")
    (tmp_path / "b" / MANIFEST).rmdir()
    with pytest.raises(BundleError, match=r"b/manifest\.json: missing; a bundle folder holds a manifest"):
        verify_bundle(tmp_path / "b")


def test_a_truncated_file_is_refused_by_size(bundle: Path) -> None:
    path = bundle / "tiny.onnx"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(BundleError, match=r"tiny\.onnx: size \d+ bytes does not match"):
        verify_bundle(bundle)


def test_a_missing_or_malformed_manifest_is_refused(bundle: Path) -> None:
    manifest = json.loads((bundle / MANIFEST).read_text())
    manifest["files"][0]["path"] = "../tiny.onnx"
    (bundle / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="must be a plain file name"):
        verify_bundle(bundle)
    (bundle / MANIFEST).unlink()
    with pytest.raises(BundleError, match=r"manifest\.json: missing"):
        Pipeline.from_bundle(bundle)


def test_engines_travel_with_their_sidecar(onnx_file: Path, engine: Path, tmp_path: Path) -> None:
    out = make_bundle([onnx_file], tmp_path / "b", engines=[engine])
    manifest = verify_bundle(out)
    assert manifest.model()["engines"] == ["tiny.plan"]
    assert {n: e["role"] for n, e in manifest.files.items()} == {
        "tiny.onnx": "onnx", "tiny.plan": "engine", "tiny.plan.json": "engine_sidecar"}
    assert manifest.sha256("tiny.plan") == _sha(engine)


def test_a_second_engine_for_one_onnx_file_is_refused(onnx_file: Path, engine: Path, tmp_path: Path) -> None:
    """Two engines of one ONNX file (say one per GPU model) were bundled, exit 0, but sample --backend
    tensorrt and triton run only the first: the second could never be used."""
    other = tmp_path / "e2" / "tiny-h100.plan"
    other.parent.mkdir()
    other.write_bytes(b"another stand-in engine")
    sidecar_path(other).write_text(sidecar_path(engine).read_text())
    result = CliRunner().invoke(main, ["bundle", "--onnx", str(onnx_file), "--engine", str(engine), "--engine",
                                       str(other), "-o", str(tmp_path / "b")])
    assert result.exit_code == 2, result.output
    assert f"{other}: a second engine built from tiny.onnx (the first: tiny.plan)" in result.output
    assert not (tmp_path / "b").exists()
    assert verify_bundle(make_bundle([onnx_file], tmp_path / "b", engines=[other])).model()["engines"] == [other.name]


def test_an_engine_from_another_onnx_file_is_refused(onnx_file: Path, engine: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.plan"
    other.write_bytes(b"x")
    sidecar_path(other).write_text(json.dumps({"onnx_sha256": "0" * 64}))
    with pytest.raises(BundleError, match=r"other\.plan: built from an ONNX file with sha256 0{64}"):
        make_bundle([onnx_file], tmp_path / "b", engines=[other])
    # `trt --onnx tiny.onnx --fp16` builds from the fp16 graph it converts (its sidecar names that
    # graph, and tiny.onnx as converted_from): the README bundled it with tiny.onnx, refused as "none
    # of the bundled ONNX files; rebuild the engine from tiny.onnx"
    converted = tmp_path / "c.plan"
    converted.write_bytes(b"x")
    sidecar_path(converted).write_text(json.dumps({"onnx_sha256": "1" * 64, "converted_from": {
        "onnx_file": onnx_file.name, "onnx_sha256": _sha(onnx_file)}}))
    with pytest.raises(BundleError, match=r"c\.plan: built from c\.plan\.onnx, the fp16 graph `trt --fp16` converted "
                                          r"from tiny\.onnx: bundle that graph with it \(--onnx .*c\.plan\.onnx\)"):
        make_bundle([onnx_file], tmp_path / "b", engines=[converted])
    lonely = tmp_path / "lonely.plan"
    lonely.write_bytes(b"x")
    with pytest.raises(ValueError, match=r"lonely\.plan\.json is missing"):
        make_bundle([onnx_file], tmp_path / "b", engines=[lonely])
    assert not (tmp_path / "b").exists()


def test_tensorrt_backend_refuses_a_mismatch_and_names_the_missing_package(onnx_file: Path, engine: Path,
                                                                           tmp_path: Path) -> None:
    spec = read_info(onnx_file).spec
    with pytest.raises(EngineMismatchError, match="rebuild the engine from this ONNX file"):
        TensorRTBackend(engine, spec, onnx_sha256="f" * 64)
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        why = r"tiny\.plan: cannot run a TensorRT engine here: the 'tensorrt' package is not installed"
        with pytest.raises(MissingDependencyError, match=why):  # exit 2, before any CUDA call
            TensorRTBackend(engine, spec, onnx_sha256=_sha(onnx_file))
        with pytest.raises(MissingDependencyError, match=why):
            Pipeline.from_bundle(make_bundle([onnx_file], tmp_path / "b", engines=[engine]), backend="tensorrt")


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_tensorrt_engine_samples_like_onnx_runtime(onnx_file: Path, tmp_path: Path) -> None:
    from ddpm_export.export.tensorrt import build_engine

    plan = tmp_path / "tiny.plan"
    build_engine(onnx_file, plan, log=lambda m: None)
    out = make_bundle([onnx_file], tmp_path / "b", engines=[plan])
    got = Pipeline.from_bundle(out, backend="tensorrt").sample(4, steps=5, progress=False)
    want = Pipeline.from_onnx(onnx_file).sample(4, steps=5, progress=False)
    assert np.abs(got - want).max() < 1e-3


def test_bundle_command_is_atomic_and_refuses_to_overwrite(onnx_file: Path, engine: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "b"
    args = ["bundle", "--onnx", str(onnx_file), "--engine", str(engine), "-o", str(out)]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert (out / MANIFEST).is_file() and (out / "tiny.plan.json").is_file()
    before = (out / MANIFEST).read_bytes()
    result = runner.invoke(main, args)
    assert result.exit_code != 0 and "exists; pass --force" in result.output
    assert (out / MANIFEST).read_bytes() == before
    (out / "notes.txt").write_text("a file the manifest does not list: the user's")
    result = runner.invoke(main, [*args, "--force"])
    assert result.exit_code == 2 and "holds notes.txt besides what this command writes" in result.output
    (out / "notes.txt").unlink()
    (out / MANIFEST).write_text((out / MANIFEST).read_text().replace("tiny.plan.json", "tiny.plan.json.x"))
    result = runner.invoke(main, [*args, "--force"])
    assert result.exit_code == 2 and "holds tiny.plan.json besides" in result.output  # what it lists, not the name
    (out / MANIFEST).write_bytes(before)
    result = runner.invoke(main, [*args, "--force"])
    assert result.exit_code == 0, result.output  # replaced as a whole
    assert sorted(os.listdir(tmp_path)) == ["b"]  # no temporary folders left behind
    verify_bundle(out)


def test_sample_picks_a_file_of_a_bundle_by_name(onnx_file: Path, tmp_path: Path) -> None:
    from ddpm_export.export.onnx import export_onnx

    fp16 = export_onnx("tiny", tmp_path / "tiny-fp16.onnx", precision="fp16", max_batch=8, log=lambda m: None).path
    out = make_bundle([onnx_file, fp16], tmp_path / "b")
    runner = CliRunner()
    args = ["sample", "--bundle", str(out), "-n", "2", "--steps", "2", "--no-progress"]
    result = runner.invoke(main, [*args, "-o", str(tmp_path / "first.png")])
    assert result.exit_code == 0 and "3x16x16, fp32)" in result.output, result.output  # the first listed
    result = runner.invoke(main, [*args, "--bundle-onnx", "tiny-fp16.onnx", "-o", str(tmp_path / "second.png")])
    assert result.exit_code == 0 and "3x16x16, fp16)" in result.output, result.output
    result = runner.invoke(main, [*args, "--bundle-onnx", "nope.onnx", "-o", str(tmp_path / "x.png")])
    assert result.exit_code == 2 and "no ONNX file 'nope.onnx' in this bundle; it has tiny.onnx, tiny-fp16.onnx" \
        in result.output, result.output
    result = runner.invoke(main, ["sample", "--onnx", str(onnx_file), "--bundle-onnx", "tiny.onnx", "-o",
                                  str(tmp_path / "x.png")])
    assert result.exit_code == 2 and "pass --bundle too" in result.output
    assert not (tmp_path / "x.png").exists()


def test_bundle_command_refuses_models_that_differ(onnx_file: Path, tmp_path: Path) -> None:
    import onnx

    model = onnx.load(str(onnx_file))
    for prop in model.metadata_props:
        if prop.key == "ddpm_export.diffusion_config":
            cfg = json.loads(prop.value)
            cfg["beta_end"] = 0.03
            prop.value = json.dumps(cfg)
    onnx.save(model, str(tmp_path / "other.onnx"))
    result = CliRunner().invoke(main, ["bundle", "--onnx", str(onnx_file), "--onnx", str(tmp_path / "other.onnx"),
                                       "-o", str(tmp_path / "b")])
    assert result.exit_code != 0 and "schedule (DiffusionConfig) differs from" in result.output
    assert "'s in beta_end; a bundle holds one model" in result.output  # the field, not only the config
    twice = CliRunner().invoke(main, ["bundle", "--onnx", str(onnx_file), "--onnx", str(onnx_file),
                                      "-o", str(tmp_path / "b")])
    assert twice.exit_code == 2 and f"{onnx_file}: given twice" in twice.output


def test_a_file_for_a_bundle_and_a_folder_for_a_file_say_which_to_use(tmp_path: Path, onnx_file: Path) -> None:
    with pytest.raises(NotAFolderError, match=r"a file, not a bundle folder \(an ONNX file is read with "
                                           r"Pipeline.from_onnx"):
        Pipeline.from_bundle(onnx_file)
    with pytest.raises(InputNotFoundError, match=r"not a bundle folder \(no such directory\)"):
        Pipeline.from_bundle(tmp_path / "missing")  # except FileNotFoundError catches it, as for from_onnx
    with pytest.raises(InputNotFoundError, match=r"a folder, not an ONNX file \(a bundle folder is read with "
                                                 r"Pipeline.from_bundle"):
        Pipeline.from_onnx(tmp_path)


def test_a_missing_file_is_a_file_not_found_error_with_its_path(tmp_path: Path) -> None:
    """Code reading ``e.filename`` / ``e.errno`` of the FileNotFoundError got None for both."""
    import errno

    for load, path in ((Pipeline.from_onnx, tmp_path / "nope.onnx"), (Pipeline.from_bundle, tmp_path / "nob")):
        with pytest.raises(FileNotFoundError) as caught:
            load(path)
        assert caught.value.filename == str(path) and caught.value.errno == errno.ENOENT
        assert str(caught.value).startswith(f"{path}: ")  # the message, not "[Errno 2] ..."


@pytest.mark.parametrize("options", [{"threads": 2}, {"inference_precision": "f32"},
                                     {"providers": ["CPUExecutionProvider"]}, {"threads": 1, "session_options": 0}])
def test_the_engine_refuses_the_options_of_the_onnx_backends(onnx_file: Path, engine: Path, tmp_path: Path,
                                                            options: dict) -> None:
    # backend="tensorrt" dropped threads, inference_precision, providers and session_options silently
    # (from_onnx refuses them on the backends that do not take them)
    from ddpm_export.errors import BadInputError

    bundle = make_bundle([onnx_file], tmp_path / "b", engines=[engine])
    names = ", ".join(options)
    with pytest.raises(BadInputError, match=f"^{names} apply to the backends that run the ONNX file, not 'tensorrt'"):
        Pipeline.from_bundle(bundle, backend="tensorrt", **options)


def test_an_engine_cache_in_a_bundle_is_refused_before_anything_is_written(bundle: Path, onnx_file: Path,
                                                                           tmp_path: Path) -> None:
    """ONNX Runtime's TensorRT provider writes its engines and timing cache into ``trt_cache_dir``:
    ``--trt-cache`` in the bundle folder filled it with files its manifest does not list (every
    later load refused it) while README promises nothing is written into a bundle folder."""
    from ddpm_export.errors import BadInputError, WrongTypeError

    before = sorted(os.listdir(bundle))
    for cache in (bundle, bundle / "cache", bundle / "cache" / ".." / "deeper"):
        with pytest.raises(BadInputError, match=f"trt_cache_dir: {re.escape(str(cache))} is inside the bundle folder .*{bundle.name}: "
                                                f"the engines cached there would break its manifest"):
            Pipeline.from_bundle(bundle, backend="ort-tensorrt", trt_cache_dir=cache)
        with pytest.raises(BadInputError, match="is inside the bundle folder"):  # a file of the bundle, loaded alone
            Pipeline.from_onnx(bundle / "tiny.onnx", backend="ort-tensorrt", trt_cache_dir=cache)
    result = CliRunner().invoke(main, ["sample", "--bundle", str(bundle), "--backend", "ort-tensorrt", "--trt-cache",
                                       str(bundle / "cache"), "-o", str(tmp_path / "x.png")])
    assert result.exit_code == 2 and f"--trt-cache: {bundle / 'cache'} is inside the bundle folder" in result.output
    assert sorted(os.listdir(bundle)) == before and not (tmp_path / "x.png").exists()
    verify_bundle(bundle)
    with pytest.raises(WrongTypeError, match="trt_cache_dir must be a str or os.PathLike naming a folder, got int"):
        Pipeline.from_onnx(onnx_file, backend="ort-tensorrt", trt_cache_dir=5)  # type: ignore[arg-type]


@pytest.mark.parametrize("folder", [None, 3, ["b"]])
def test_a_bundle_that_is_not_a_path_is_a_type_error_naming_it(folder: object) -> None:
    # from_bundle(None) was a raw TypeError from pathlib; from_onnx(None) already named the type
    from ddpm_export.errors import WrongTypeError

    with pytest.raises(WrongTypeError, match=f"a bundle must be a str or os.PathLike naming its folder, "
                                             f"got {type(folder).__name__}"):
        Pipeline.from_bundle(folder)  # type: ignore[arg-type]


def _tiny_variant(folder: Path, seed: int, **changes: object) -> Path:
    """tiny's architecture (with ``changes``), seed-``seed`` weights, saved and exported: its ONNX file."""
    from ddpm_export.config import UNetConfig
    from ddpm_export.export.onnx import export_onnx
    from ddpm_export.nn.checkpoint import build_model, save_checkpoint
    from ddpm_export.presets import MODELS_DIR

    cfg = UNetConfig.load(MODELS_DIR / "tiny" / "config.json").replace(**changes)
    save_checkpoint(build_model(cfg, seed=seed), folder / "ckpt")
    return export_onnx(folder / "ckpt", folder / "v.onnx", max_batch=8, log=lambda s: None).path


def test_files_from_other_weights_are_not_one_model(onnx_file: Path, tmp_path: Path) -> None:
    """Same architecture and schedule, other weights: bundled as one model before (exit 0)."""
    other = _tiny_variant(tmp_path, seed=7)
    with pytest.raises(BundleError, match=r"v.onnx was exported from other weights than .*tiny.onnx \(source sha256 "):
        make_bundle([onnx_file, other], tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_files_from_a_re_saved_copy_of_the_same_weights_are_one_model(tmp_path: Path) -> None:
    """A checkpoint re-saved with other safetensors metadata (other file bytes, the same tensors):
    its export was refused as "other weights" beside the original's; the tensors digest matches."""
    from safetensors.torch import save_file

    from ddpm_export.export.onnx import export_onnx
    from ddpm_export.nn.checkpoint import load_model, save_checkpoint

    unet = load_model("tiny")
    save_checkpoint(unet, tmp_path / "a")
    save_checkpoint(unet, tmp_path / "b")
    save_file({k: v.contiguous() for k, v in unet.state_dict().items()}, str(tmp_path / "b" / "model.safetensors"),
              metadata={"format": "pt", "saved_by": "a re-save"})
    paths = [export_onnx(tmp_path / n, tmp_path / f"{n}.onnx", max_batch=2, validate=False, log=lambda s: None).path
             for n in ("a", "b")]
    assert read_info(paths[0]).source_sha256 != read_info(paths[1]).source_sha256
    manifest = verify_bundle(make_bundle(paths, tmp_path / "bundle"))
    assert sorted(manifest.files) == ["a.onnx", "b.onnx"]


def test_triton_refuses_a_model_the_samplers_cannot_run(tmp_path: Path) -> None:
    """6 output channels for 3 inputs: the repository was written, then its sampler failed to load."""
    from ddpm_export.serve.repository import write_repository

    make_bundle([_tiny_variant(tmp_path, seed=0, out_channels=6)], tmp_path / "b")
    with pytest.raises(ValueError, match=r"outputs 6 channels for 3 input channels; the samplers read one"):
        write_repository(tmp_path / "b", tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


def test_make_bundle_checks_its_arguments_types(tmp_path: Path, onnx_file: Path) -> None:
    """force="no" replaced an existing bundle; a str for onnx was read one character at a time; a
    missing engine was a ValueError where a missing ONNX file is a FileNotFoundError."""
    from ddpm_export.errors import WrongTypeError

    make_bundle([onnx_file], tmp_path / "b")
    before = (tmp_path / "b" / "manifest.json").read_bytes()
    for kwargs, message in ((dict(force="no"), r"force must be True or False, got 'no'"),
                            (dict(onnx=str(onnx_file)), r"onnx must be a list of file paths \(one file: \[path\]\), "
                                                        r"got str"),
                            (dict(onnx=[onnx_file, 3]), r"onnx: every entry must be a str or os.PathLike, got int"),
                            (dict(engines="x.plan"), r"engines must be a list of file paths"),
                            (dict(out=None), r"out must be a str or os.PathLike naming the bundle folder, got NoneType")):
        args = {"onnx": [onnx_file], "out": tmp_path / "b", **kwargs}
        with pytest.raises(WrongTypeError, match=message):
            make_bundle(args.pop("onnx"), args.pop("out"), **args)
    assert (tmp_path / "b" / "manifest.json").read_bytes() == before
    with pytest.raises(FileNotFoundError, match=r"missing.plan: no such engine file"):
        make_bundle([onnx_file], tmp_path / "c", engines=[tmp_path / "missing.plan"])
    assert not (tmp_path / "c").exists()


def test_a_manifest_with_version_true_or_one_file_twice_is_refused(tmp_path: Path, onnx_file: Path) -> None:
    bundle = make_bundle([onnx_file], tmp_path / "b")
    data = json.loads((bundle / "manifest.json").read_text())
    for edit, message in ((lambda d: d.update(version=True), r"'version' True is not supported"),
                          (lambda d: d["models"].append(d["models"][0]), r"'models' lists one ONNX file twice")):
        edited = json.loads(json.dumps(data))
        edit(edited)
        (bundle / "manifest.json").write_text(json.dumps(edited))
        with pytest.raises(ValueError, match=message):
            Pipeline.from_bundle(bundle)


def test_a_manifest_edited_to_serve_another_file_as_an_engine_is_refused(onnx_file: Path, engine: Path,
                                                                          tmp_path: Path) -> None:
    """The manifest carries no hash of itself: `engines: ["tiny.onnx"]` made `triton --unet-backend
    tensorrt` copy the ONNX file in as model.plan (the server failed only when loading it), and an
    engine moved to another ONNX file's entry was served for it."""
    bundle = make_bundle([onnx_file], tmp_path / "b", engines=[engine])
    data = json.loads((bundle / MANIFEST).read_text())
    for engines, message in ((["tiny.onnx"], r"model file 'tiny.onnx' is listed in 'files' as 'onnx', not 'engine'"),
                             (["tiny.plan.json"], r"'tiny.plan.json' is listed in 'files' as 'engine_sidecar'")):
        data["models"][0]["engines"] = engines
        (bundle / MANIFEST).write_text(json.dumps(data))
        with pytest.raises(BundleError, match=message):
            verify_bundle(bundle)
    other = tmp_path / "other.plan"  # a sidecar naming another ONNX file, its bytes hashed into the manifest
    other.write_bytes(b"x")
    sidecar_path(other).write_text(json.dumps({"onnx_sha256": "0" * 64}))
    for name in ("tiny.plan", "tiny.plan.json"):
        source = other if name == "tiny.plan" else sidecar_path(other)
        os.replace(bundle / name, tmp_path / f"old-{name}")
        (bundle / name).write_bytes(source.read_bytes())
        entry = next(e for e in data["files"] if e["path"] == name)
        entry.update(sha256=_sha(bundle / name), size=(bundle / name).stat().st_size)
    data["models"][0]["engines"] = ["tiny.plan"]
    (bundle / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(EngineMismatchError, match=r"tiny\.plan: built from an ONNX file with sha256 0{64}"):
        verify_bundle(bundle)


def test_a_manifest_nested_too_deep_for_the_parser_is_refused_as_bad_json(tmp_path: Path) -> None:
    """json.loads raises RecursionError there: a traceback and exit 1 (sample --bundle, and any
    output path below the folder, whose check reads the manifest)."""
    (tmp_path / "deep").mkdir()
    (tmp_path / "deep" / MANIFEST).write_text("[" * 100_000)
    with pytest.raises(BundleError, match=r"manifest\.json: not valid JSON"):
        verify_bundle(tmp_path / "deep")
    from ddpm_export.files import enclosing_bundle

    assert enclosing_bundle(tmp_path / "deep" / "x.png") is None  # not a bundle we can vouch for
