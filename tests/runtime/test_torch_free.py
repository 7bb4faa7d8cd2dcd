"""ddpm_export.diffusion and ddpm_export.runtime import and sample with torch unimportable."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from blockers import BLOCK_TORCH

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = BLOCK_TORCH + textwrap.dedent("""
    try:
        import torch  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("the import blocker did not block torch")

    import numpy as np
    import ddpm_export.diffusion, ddpm_export.runtime
    # every submodule, so nothing imports torch lazily behind a package __init__
    for package in (ddpm_export.diffusion, ddpm_export.runtime):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            importlib.import_module(info.name)

    from ddpm_export.diffusion import DiffusionConfig, make_scheduler, sample
    for sampler in ("ddim", "ddpm"):
        scheduler = make_scheduler(DiffusionConfig(num_inference_steps=3, eta=0.5), sampler)
        x = sample(lambda x, t, c: 0.1 * x, scheduler, (1, 1, 2, 2), seed=0)
        assert x.shape == (1, 1, 2, 2)
    leaked = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
    assert not leaked, leaked
    print("torch-free ok")
""")


def test_diffusion_and_runtime_import_without_torch() -> None:
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "torch-free ok" in result.stdout
