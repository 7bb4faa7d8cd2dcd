"""The package data: presets found through importlib.resources, the shipped ONNX file in step
with the shipped weights and configs, a config-only folder given as a path."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from ddpm_export import presets
from ddpm_export.cli import main
from ddpm_export.contract import metadata as md
from ddpm_export.runtime.info import read_metadata


def test_presets_live_inside_the_package():
    import ddpm_export

    assert presets.MODELS_DIR.parent == presets.Path(ddpm_export.__file__).resolve().parent
    assert presets.preset_names() == ["ddpm-cifar10", "digits", "kitchen-sink", "tiny"]
    assert presets.shipped_onnx("digits") == presets.MODELS_DIR / "digits" / "model.onnx"
    assert presets.shipped_onnx("tiny") is None and presets.shipped_onnx("nope") is None


def test_shipped_onnx_was_exported_from_the_shipped_weights_and_configs():
    folder = presets.MODELS_DIR / "digits"
    props = read_metadata(folder / "model.onnx")
    assert props[md.SOURCE_SHA256] == md.sha256_file(folder / "model.safetensors")
    assert json.loads(props[md.UNET_CONFIG]) == json.loads((folder / "config.json").read_text())
    diffusion = json.loads((folder / "diffusion.json").read_text())
    assert {k: v for k, v in json.loads(props[md.DIFFUSION_CONFIG]).items() if k in diffusion} == diffusion


def test_config_only_folder_given_as_a_path(tmp_path):
    pytest.importorskip("torch")
    import ddpm_export

    from ddpm_export.errors import DdpmExportWarning

    folder = tmp_path / "models" / "tiny"
    shutil.copytree(presets.MODELS_DIR / "tiny", folder)
    # a folder of one's own without weights: said, since a checkpoint's weights may have gone astray
    with pytest.warns(DdpmExportWarning, match=r"tiny holds no model.safetensors: the model gets seed-initialised"):
        by_path = ddpm_export.load_model(folder)
    by_name = ddpm_export.load_model("tiny")
    assert all((a == b).all() for a, b in zip(by_path.state_dict().values(), by_name.state_dict().values()))


def test_python_dash_m_runs_the_cli():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "ddpm_export", "--help"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0 and "Usage: ddpm-export" in proc.stdout, proc.stderr


def test_sample_default_needs_no_export(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["sample", "-n", "2", "--steps", "3", "-o", "x.png"])
    assert result.exit_code == 0, result.output
    assert "exporting" not in result.output and (tmp_path / "x.png").is_file()


def test_shipped_onnx_is_byte_for_byte_a_fresh_export(tmp_path):
    """What the README promises: `ddpm-export onnx --model digits` writes the shipped file, byte for
    byte, with the torch and onnx that exported it (the file names them; others may order bytes
    differently). A stale file (an older exporter's metadata or initializer names) fails here."""
    pytest.importorskip("torch")
    import onnx
    import torch

    from ddpm_export.export.onnx import export_onnx

    shipped = presets.MODELS_DIR / "digits" / "model.onnx"
    here = f"torch {torch.__version__.split('+')[0]}; onnx {onnx.__version__}"
    recorded = read_metadata(shipped)[md.EXPORTER_VERSION]
    if not recorded.endswith(here):
        pytest.skip(f"the shipped file was exported with {recorded!r}; this environment has {here}")
    fresh = export_onnx("digits", tmp_path / "model.onnx", validate=False, log=lambda line: None).path
    assert fresh.read_bytes() == shipped.read_bytes()


def test_the_cpu_torch_hint_installs_the_torch_the_export_extra_allows():
    """errors.CPU_TORCH (the missing-extra message's hint) pins the newest torch pyproject.toml allows."""
    import re
    import tomllib
    from pathlib import Path

    from ddpm_export.errors import CPU_TORCH

    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]
    (pin,) = [r for r in project["optional-dependencies"]["export"] if r.startswith("torch")]
    newest = re.search(r"<=\s*([\w.]+)", pin).group(1)
    assert f"torch=={newest} " in CPU_TORCH and "download.pytorch.org/whl/cpu" in CPU_TORCH


def test_the_dev_extra_holds_what_building_the_wheel_needs():
    """tests/packaging builds the wheel with --no-build-isolation, from the packages ./dev installs
    (the dev extra): a fresh venv's setuptools (65 on Python 3.11, none on 3.12) cannot build it."""
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    dev = {r.replace(" ", "").split(";")[0] for r in project["project"]["optional-dependencies"]["dev"]}
    assert {r.replace(" ", "") for r in project["build-system"]["requires"]} <= dev


def test_the_version_is_the_same_in_pyproject_and_the_package():
    """Written twice (pyproject.toml's [project] version, ddpm_export/_version.py): a release that
    bumps one only would say one version in `ddpm-export --version` and another to pip."""
    import tomllib
    from pathlib import Path

    from ddpm_export._version import __version__

    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]
    assert project["version"] == __version__
