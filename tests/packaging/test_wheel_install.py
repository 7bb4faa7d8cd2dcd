"""The wheel, installed as a production user would: a fresh venv with only the core
dependencies (no torch, no onnx), outside the source tree."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from ddpm_export.presets import preset_names

# builds a wheel and a venv: end to end, so out of the quick run (-m 'not slow'); CI runs it
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def _run(cmd: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(bin folder of a fresh venv with the wheel installed, a scratch folder outside the tree)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"  # a clean copy: no stale build/ folder of the checkout can leak into the wheel
    shutil.copytree(ROOT / "ddpm_export", src / "ddpm_export",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*.tmp-*"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                  "-w", str(tmp / "dist"), str(src)], cwd=tmp)
    assert built.returncode == 0, built.stderr
    [wheel] = (tmp / "dist").glob("ddpm_export-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    assert {"ddpm_export/py.typed", "ddpm_export/models/digits/model.onnx",
            "ddpm_export/models/digit-classifier/classifier.safetensors"} <= names
    assert not any(n.startswith("models/") for n in names)  # never a shared top-level folder
    assert "ddpm_export-0.1.0.dist-info/licenses/LICENSE" in names
    work = tmp / "work"
    work.mkdir()
    return _venv_with(tmp / "venv", str(wheel)), work


def _venv_with(folder: Path, requirement: str) -> Path:
    """The bin folder of a fresh venv at ``folder`` with ``requirement`` (the wheel, maybe with extras) installed."""
    venv.create(folder, with_pip=True)
    bin_dir = folder / "bin"
    pip = _run([str(bin_dir / "python"), "-m", "pip", "install", "-q", requirement], cwd=folder.parent)
    assert pip.returncode == 0, pip.stderr
    return bin_dir


def test_the_venv_has_only_the_core_dependencies(installed):
    bin_dir, work = installed
    probe = _run([str(bin_dir / "python"), "-c", "import importlib.util as u; "
                  "print([m for m in ('torch', 'onnx', 'safetensors') if u.find_spec(m)])"], cwd=work)
    assert probe.stdout.strip() == "[]", probe.stdout + probe.stderr


def test_models_lists_every_preset(installed):
    bin_dir, work = installed
    proc = _run([str(bin_dir / "ddpm-export"), "models"], cwd=work)
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line.split() for line in proc.stdout.strip().splitlines()[1:]}
    assert sorted(rows) == preset_names() and "digits" in rows
    assert rows["digits"][1] == "1,114,209"


def test_sample_runs_the_shipped_model_without_torch(installed):
    bin_dir, work = installed
    proc = _run([str(bin_dir / "ddpm-export"), "sample", "-n", "4", "-o", "x.png"], cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert "wrote x.png (4 images, 1x16x16, fp32)" in proc.stdout
    from PIL import Image

    with Image.open(work / "x.png") as image:
        assert min(image.size) >= 32  # 2x2 tiles of 16x16
        assert len(set(image.getdata())) > 10  # real digits, not a flat image


def test_export_commands_name_the_missing_extra(installed):
    bin_dir, work = installed
    proc = _run([str(bin_dir / "python"), "-m", "ddpm_export", "onnx", "--model", "digits", "-o", "d.onnx"], cwd=work)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "Error: this command needs the export extra (no module 'onnx'): pip install 'ddpm-export[export]' (first "
        "the CPU build of torch, or pip takes the multi-GB CUDA one on Linux: pip install torch==2.13.0 "
        "--index-url https://download.pytorch.org/whl/cpu)"]
    assert not (work / "d.onnx").exists()
    # a typo in --model is named as one, not as a missing extra (the export would need torch)
    proc = _run([str(bin_dir / "ddpm-export"), "sample", "--model", "digit", "-o", "t.png"], cwd=work)
    assert proc.returncode == 2 and proc.stderr.startswith("Error: unknown model 'digit': not a folder on disk and "
                                                           "not a preset; presets: "), proc.stderr


def test_the_openvino_backend_names_its_extra_then_runs_once_installed(installed):
    """Core only: ``--backend openvino`` says which extra to install (exit 2, nothing written).
    The wheel with the ``openvino`` extra, in a second fresh venv: it samples, still without torch."""
    bin_dir, work = installed
    args = ["sample", "-n", "4", "--backend", "openvino", "--inference-precision", "f32", "-o", "ov.png"]
    proc = _run([str(bin_dir / "ddpm-export"), *args], cwd=work)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "Error: the openvino backend needs OpenVINO: pip install 'ddpm-export[openvino]'"]
    assert not (work / "ov.png").exists()

    [wheel] = (work.parent / "dist").glob("ddpm_export-*.whl")
    ov_bin = _venv_with(work.parent / "venv-openvino", f"{wheel}[openvino]")
    proc = _run([str(ov_bin / "ddpm-export"), *args], cwd=work)
    assert proc.returncode == 0, proc.stderr
    assert "wrote ov.png (4 images, 1x16x16, fp32)" in proc.stdout
    probe = _run([str(ov_bin / "python"), "-c", "import importlib.util as u; "
                  "print([m for m in ('torch', 'onnx', 'openvino') if u.find_spec(m)])"], cwd=work)
    assert probe.stdout.strip() == "['openvino']", probe.stdout + probe.stderr
