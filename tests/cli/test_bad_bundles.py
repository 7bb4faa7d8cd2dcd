"""Bad-input corpus, bundles and engine sidecars: manifest fields of the wrong type, unlisted
files, symlinks, altered or missing files, external data that escapes; sidecars missing, not
JSON or naming another ONNX file. ``ddpm-export sample --bundle`` / ``ddpm-export bundle`` refuse
each with one line naming the file (exit 2), nothing written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the exports need torch")
onnx = pytest.importorskip("onnx")

from ddpm_export.runtime import make_bundle  # noqa: E402

from bad_inputs import expect_failure  # noqa: E402
from runtime_exports import exported  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return exported("tiny", tmp_path_factory)


@pytest.fixture(scope="module")
def good_bundle(tmp_path_factory, tiny) -> Path:
    return make_bundle([tiny], tmp_path_factory.mktemp("bundle") / "b")


@pytest.fixture()
def bundle(tmp_path, good_bundle) -> Path:
    folder = tmp_path / "b"
    shutil.copytree(good_bundle, folder)
    return folder


def _sample(bundle: Path, out: Path) -> list:
    return ["sample", "--bundle", bundle, "-n", "2", "--steps", "2", "-o", out / "x.png", "--no-progress"]


def _edit_manifest(folder: Path, edit) -> None:
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _file(data, key, value):
    data["files"][0][key] = value


MANIFEST_CASES = {
    "format": (lambda d: d.update(format="zip"), "'format' must be 'ddpm-export-bundle'"),
    "version": (lambda d: d.update(version="1"), "'version' '1' is not supported"),
    "files-not-list": (lambda d: d.update(files={"a": 1}), "'files' must be a non-empty list"),
    "files-empty": (lambda d: d.update(files=[]), "'files' must be a non-empty list"),
    "entry-not-object": (lambda d: d["files"].__setitem__(0, "tiny.onnx"), "every 'files' entry needs"),
    "size-is-text": (lambda d: _file(d, "size", "836952"), "size must be a non-negative integer, got '836952'"),
    "size-negative": (lambda d: _file(d, "size", -1), "size must be a non-negative integer"),
    "size-is-bool": (lambda d: _file(d, "size", True), "size must be a non-negative integer"),
    "sha256-is-int": (lambda d: _file(d, "sha256", 12), "sha256 must be 64 lowercase hex digits"),
    "sha256-short": (lambda d: _file(d, "sha256", "abc"), "sha256 must be 64 lowercase hex digits"),
    "role-is-list": (lambda d: _file(d, "role", ["onnx"]), "role \\['onnx'\\] is not one of"),
    "role-unknown": (lambda d: _file(d, "role", "weights"), "role 'weights' is not one of"),
    "path-escapes": (lambda d: _file(d, "path", "../tiny.onnx"), "must be a plain file name"),
    "path-is-int": (lambda d: _file(d, "path", 3), "must be a plain file name"),
    "engines-not-list": (lambda d: d["models"][0].update(engines="x.plan"),
                         "model 'tiny.onnx': 'engines' must be a list of file names"),
    # the entry was shown whole (2,228 characters of metadata) without naming what is wrong
    "model-lacks-onnx": (lambda d: d["models"][0].pop("onnx"), "a 'models' entry lacks 'onnx' \\(each has onnx, "),
    "model-onnx-is-int": (lambda d: d["models"][0].update(onnx=3),
                          "a 'models' entry's onnx must be a file name; got int"),
    "metadata-not-object": (lambda d: d["models"][0].update(metadata=[1]), "'metadata' must map strings"),
    "models-missing": (lambda d: d.pop("models"), "the manifest lacks 'models' \\(version 1 has format, "),
    "models-empty": (lambda d: d.update(models=[]), "'models' must be a non-empty list"),
    # a key missing was read as None ("sampler_defaults 'eta' is None"), an unknown one was ignored
    "sampler-defaults-missing": (lambda d: d.pop("sampler_defaults"), "the manifest lacks 'sampler_defaults'"),
    "created-by-missing": (lambda d: d.pop("created_by"), "the manifest lacks 'created_by'"),
    "unknown-key": (lambda d: d.update(signature="x"), "the manifest has unknown key 'signature' \\(version 1 has "),
    "file-unknown-key": (lambda d: _file(d, "mode", 420), "file 'tiny.onnx' has unknown key 'mode' \\(each has path, "),
    "file-lacks-role": (lambda d: d["files"][0].pop("role"), "file 'tiny.onnx' lacks 'role'"),
    "model-lacks-precision": (lambda d: d["models"][0].pop("precision"), "a 'models' entry lacks 'precision'"),
    "model-unknown-key": (lambda d: d["models"][0].update(engine="x"), "a 'models' entry has unknown key 'engine'"),
    "diffusion-bad": (lambda d: d.update(diffusion={"num_train_timesteps": "many"}), "num_train_timesteps"),
    "sampler-defaults": (lambda d: d.update(sampler_defaults=[1]), "'sampler_defaults' must be an object"),
    # the per-model metadata must be the file's own (triton serves the schedule and batch range it reads there)
    "metadata-edited": (lambda d: _edit_metadata(d, "ddpm_export.diffusion_config", beta_end=0.05),
                        "the metadata it records for tiny.onnx differs from the file's own "
                        "\\(key 'ddpm_export.diffusion_config'\\)"),
    "metadata-key-added": (lambda d: d["models"][0]["metadata"].update(extra="1"), "\\(key 'extra'\\)"),
    # the summaries must say what the files say (num_inference_steps -3 was accepted)
    "sampler-defaults-edited": (lambda d: d["sampler_defaults"].update(num_inference_steps=-3),
                                "sampler_defaults 'num_inference_steps' is -3, its ONNX file's metadata says 50"),
    "precision-edited": (lambda d: d["models"][0].update(precision="int8"),
                         "models\\['tiny.onnx'\\] 'precision' is 'int8', its ONNX file's metadata says 'fp32'"),
    "diffusion-edited": (lambda d: d["diffusion"].update(beta_end=0.03),
                         "models\\['tiny.onnx'\\] 'diffusion.beta_end' is 0.03, its ONNX file's metadata says 0.02"),
}


def _edit_metadata(data, key, **changes):
    metadata = data["models"][0]["metadata"]
    metadata[key] = json.dumps({**json.loads(metadata[key]), **changes})


def test_triton_refuses_a_manifest_whose_metadata_was_edited(tmp_path, bundle):
    _edit_manifest(bundle, lambda d: _edit_metadata(d, "ddpm_export.export_spec", max_batch=8))
    expect_failure(["triton", "--bundle", bundle, "-o", tmp_path / "repo"], 2,
                   "key 'ddpm_export.export_spec'", "the manifest was edited", watch=[tmp_path])


@pytest.mark.parametrize("name", MANIFEST_CASES)
def test_bad_manifest_fields(tmp_path, bundle, name):
    edit, message = MANIFEST_CASES[name]
    _edit_manifest(bundle, edit)
    out = tmp_path / "out"
    out.mkdir()
    expect_failure(_sample(bundle, out), 2, "manifest.json", message, watch=[tmp_path])


def test_manifest_not_json(tmp_path, bundle):
    (bundle / "manifest.json").write_text("{")
    expect_failure(_sample(bundle, tmp_path), 2, "manifest.json: not valid JSON", watch=[tmp_path])


def test_manifest_with_a_key_given_twice(tmp_path, bundle):
    """json keeps the last of two keys silently: a second 'files' list hid the first."""
    path = bundle / "manifest.json"
    data = json.loads(path.read_text())
    path.write_text(json.dumps(data)[:-1] + ', "files": ' + json.dumps(data["files"]) + "}")
    expect_failure(_sample(bundle, tmp_path), 2, "manifest.json: not valid JSON \\(key 'files' is given twice\\)",
                   watch=[tmp_path])


def test_manifest_missing(tmp_path, bundle):
    (bundle / "manifest.json").unlink()
    expect_failure(_sample(bundle, tmp_path), 2, "manifest.json: missing", watch=[tmp_path])


def test_unlisted_file(tmp_path, bundle):
    (bundle / "tiny.onnx.data").write_bytes(b"weights nobody hashed")
    expect_failure(_sample(bundle, tmp_path), 2, "tiny.onnx.data: not listed in manifest.json", watch=[tmp_path])


def test_a_file_managers_own_files_are_let_be(tmp_path, bundle):
    """A bundle opened in macOS' Finder gains .DS_Store (and ._* companions on other file systems):
    it was refused as an unlisted file."""
    from click.testing import CliRunner

    from ddpm_export.cli import main

    for name in (".DS_Store", "._tiny.onnx", "Thumbs.db"):
        (bundle / name).write_bytes(b"\x00\x00\x00\x01Bud1")
    result = CliRunner().invoke(main, _sample(bundle, tmp_path))
    assert result.exit_code == 0, result.output
    from ddpm_export.runtime import make_bundle

    make_bundle([bundle / "tiny.onnx"], tmp_path / "copy")  # --force replaces a bundle holding only those too
    (tmp_path / "copy" / ".DS_Store").write_bytes(b"Bud1")
    (tmp_path / "src.onnx").write_bytes((bundle / "tiny.onnx").read_bytes())
    assert make_bundle([tmp_path / "src.onnx"], tmp_path / "copy", force=True).name == "copy"
    (bundle / "notes.txt").write_text("anything else is still refused")
    expect_failure(_sample(bundle, tmp_path / "again"), 2, "notes.txt: not listed in manifest.json", watch=[bundle])


def test_symlink_member(tmp_path, bundle):
    outside = tmp_path / "elsewhere.onnx"
    shutil.move(bundle / "tiny.onnx", outside)
    os.symlink(outside, bundle / "tiny.onnx")
    expect_failure(_sample(bundle, tmp_path), 2, "tiny.onnx: is a symbolic link", watch=[tmp_path])


def test_altered_file(tmp_path, bundle):
    data = bytearray((bundle / "tiny.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bundle / "tiny.onnx").write_bytes(bytes(data))
    expect_failure(_sample(bundle, tmp_path), 2, "tiny.onnx: sha256 .* does not match manifest.json",
                   watch=[tmp_path])


def test_grown_file(tmp_path, bundle):
    with open(bundle / "tiny.onnx", "ab") as f:
        f.write(b"\0")
    expect_failure(_sample(bundle, tmp_path), 2, "tiny.onnx: size \\d+ bytes does not match", watch=[tmp_path])


def test_listed_file_missing(tmp_path, bundle):
    (bundle / "tiny.onnx").unlink()
    expect_failure(_sample(bundle, tmp_path), 2, "tiny.onnx: missing; manifest.json lists it", watch=[tmp_path])


def test_bundle_covers_every_external_data_file(tmp_path, tiny):
    """External data under any name is bundled and hashed; one escaping its folder is refused."""
    proto = onnx.load(str(tiny))
    src = tmp_path / "src"
    src.mkdir()
    onnx.save_model(proto, str(src / "m.onnx"), save_as_external_data=True, location="weights.bin", size_threshold=0)
    made = make_bundle([src / "m.onnx"], tmp_path / "ok")
    roles = {f["path"]: f["role"] for f in json.loads((made / "manifest.json").read_text())["files"]}
    assert roles == {"m.onnx": "onnx", "weights.bin": "onnx_data"}
    proto = onnx.load(str(src / "m.onnx"), load_external_data=False)
    for tensor in onnx.external_data_helper._get_all_tensors(proto):
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../weights.bin"
    onnx.save(proto, str(src / "m.onnx"))
    shutil.copy(src / "weights.bin", tmp_path / "weights.bin")
    expect_failure(["bundle", "--onnx", src / "m.onnx", "-o", tmp_path / "bad"], 2,
                   "m.onnx", "escapes", watch=[tmp_path])


def test_a_runtime_without_onnx_bundles_the_external_data_the_file_names(tmp_path, tiny):
    """Without the onnx package (a runtime-only install), bundle took only <name>.data: a file whose
    weights are in weights.bin was bundled (and copied into a Triton repository) without them, and a
    location outside its folder was not refused."""
    src = tmp_path / "src"
    src.mkdir()
    onnx.save_model(onnx.load(str(tiny)), str(src / "m.onnx"), save_as_external_data=True, location="weights.bin",
                    size_threshold=0)
    runner = textwrap.dedent("""
        import sys
        sys.modules["onnx"] = None  # a runtime-only install
        from ddpm_export.runtime import make_bundle
        from ddpm_export.serve.repository import write_repository
        out = make_bundle([sys.argv[1]], sys.argv[2])
        repo = write_repository(out, sys.argv[3])
        print(sorted(p.name for p in out.iterdir()), sorted(p.name for p in (repo / "unet" / "1").iterdir()))
    """)
    proc = subprocess.run([sys.executable, "-c", runner, str(src / "m.onnx"), str(tmp_path / "b"),
                           str(tmp_path / "repo")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[0] == ("['m.onnx', 'manifest.json', 'weights.bin'] "
                                          "['model.onnx', 'weights.bin']")
    shutil.copy(src / "weights.bin", tmp_path / "weights.bin")
    for location in ("../weights.bin", str(tmp_path / "weights.bin")):
        proto = onnx.load(str(src / "m.onnx"), load_external_data=False)
        for tensor in onnx.external_data_helper._get_all_tensors(proto):
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = location
        moved = tmp_path / "moved" / "m.onnx"
        moved.parent.mkdir(exist_ok=True)
        onnx.save(proto, str(moved))
        proc = subprocess.run([sys.executable, "-c", runner, str(moved), str(tmp_path / "bad"),
                               str(tmp_path / "bad-repo")], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 1 and f"BundleError: {moved}: external data {location!r} is not a plain file " \
            f"name beside it (it escapes its folder)" in proc.stderr, proc.stderr
        assert not (tmp_path / "bad").exists()


# --- engine sidecars ---------------------------------------------------------------------------
def _engine(tmp_path: Path, sidecar: str | None) -> Path:
    engine = tmp_path / "e" / "tiny.plan"
    engine.parent.mkdir()
    engine.write_bytes(b"not really an engine")
    if sidecar is not None:
        (engine.parent / "tiny.plan.json").write_text(sidecar)
    return engine


SIDECAR_CASES = {
    "missing": (None, "its sidecar tiny.plan.json is missing"),
    "not-json": ("{", "tiny.plan.json: not valid JSON"),
    "a-list": ("[]", "needs an 'onnx_sha256' string"),
    "sha-not-text": ('{"onnx_sha256": 5}', "needs an 'onnx_sha256' string"),
    "another-onnx": ('{"onnx_sha256": "' + "0" * 64 + '"}', "none of the bundled ONNX files"),
    "duplicate-key": ('{"onnx_sha256": "' + "0" * 64 + '", "onnx_sha256": "' + "1" * 64 + '"}',
                      "tiny.plan.json: not valid JSON \\(key 'onnx_sha256' is given twice\\)"),
}


@pytest.mark.parametrize("name", SIDECAR_CASES)
def test_bad_engine_sidecar(tmp_path, tiny, name):
    text, message = SIDECAR_CASES[name]
    engine = _engine(tmp_path, text)
    expect_failure(["bundle", "--onnx", tiny, "--engine", engine, "-o", tmp_path / "b"], 2, message,
                   watch=[tmp_path])


def test_control_characters_from_a_file_reach_the_terminal_escaped(tmp_path, tiny):
    """A sidecar's onnx_sha256 is echoed in the Error line: its ESC sequences (clear screen, window
    title), carriage return and C1 CSI went to the terminal raw (click strips none on a terminal)."""
    from click.testing import CliRunner

    from ddpm_export.cli import main

    hostile = "\x1b]0;pwned\x07\x1b[2J\rfake\x9b31m"
    engine = _engine(tmp_path, json.dumps({"onnx_sha256": hostile}))
    result = CliRunner().invoke(main, ["bundle", "--onnx", str(tiny), "--engine", str(engine), "-o",
                                       str(tmp_path / "b")], color=True)  # as on a terminal
    assert result.exit_code == 2 and not (tmp_path / "b").exists()
    assert result.output.count("\n") == 1 and result.output.endswith("\n"), repr(result.output)
    assert "sha256 \\x1b]0;pwned\\x07\\x1b[2J\\rfake\\x9b31m (per tiny.plan.json)" in result.output, result.output
    assert not any(ord(c) < 32 or 127 <= ord(c) < 160 for c in result.output[:-1]), repr(result.output)
