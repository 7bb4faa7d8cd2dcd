"""./dev's promise: a second run skips pip when pyproject.toml has not changed, whichever Python
(``PYTHON``) it is given. Run on a copy of the script in a scratch checkout whose stamp matches,
with a ``PYTHON`` wrapper that logs its calls (and answers pip's without running it)."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: what ./dev's up-to-date check looks for (besides .triton-site/numpy and this checkout's ddpm_export)
CHECKED = ("torch", "onnx", "onnxruntime", "safetensors", "polygraphy", "diffusers", "pytest", "hypothesis",
           "tritonclient", "pytriton", "openvino")


@pytest.fixture
def installed_checkout(tmp_path: Path) -> Path:
    """A checkout ./dev takes for installed: a matching stamp, .triton-site/numpy, its ddpm_export."""
    missing = [m for m in CHECKED if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"./dev would install {', '.join(missing)} here")
    root = tmp_path.resolve() / "checkout"
    (root / "ddpm_export").mkdir(parents=True)
    (root / "ddpm_export" / "__init__.py").write_text("")
    (root / ".triton-site" / "numpy").mkdir(parents=True)
    for name in ("dev", "pyproject.toml"):
        shutil.copy2(ROOT / name, root / name)
    (root / ".install-stamp").write_text(hashlib.sha256((root / "pyproject.toml").read_bytes()).hexdigest() + "\n")
    wrapper = root / "venv" / "bin" / "py"
    wrapper.parent.mkdir(parents=True)
    wrapper.write_text(f'#!/usr/bin/env bash\necho "$*" >> "{root / "calls.log"}"\n'
                       f'[[ "$1 $2" == "-m pip" ]] && exit 0\nexec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    return root


@pytest.mark.parametrize("python", ["venv/bin/py", "{root}/venv/bin/py"])
def test_an_installed_checkout_runs_no_pip(installed_checkout: Path, python: str):
    root = installed_checkout
    env = {**os.environ, "PYTHON": python.format(root=root), "PYTHONPATH": str(root)}
    proc = subprocess.run(["./dev", "test", "--version"], cwd=root, env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    calls = (root / "calls.log").read_text().splitlines()
    assert [c for c in calls if c.startswith("-m pip")] == [], calls
    assert calls[-1] == "-m pytest -q --version"
