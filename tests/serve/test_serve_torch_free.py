"""ddpm_export.serve imports without torch (a Triton server's Python needs no PyTorch), and
writing a repository from a bundle needs none either."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from blockers import BLOCK_TORCH

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = BLOCK_TORCH + textwrap.dedent("""
    import ddpm_export.serve
    for info in pkgutil.walk_packages(ddpm_export.serve.__path__, "ddpm_export.serve."):
        importlib.import_module(info.name)
    import ddpm_export.commands.triton
    leaked = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
    assert not leaked, leaked
    print("serve torch-free ok")
""")


def test_serve_imports_without_torch() -> None:
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "serve torch-free ok" in result.stdout
