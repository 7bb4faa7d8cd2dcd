"""Real ONNX exports of the presets for the runtime, bundle, sample and verify tests, made once
per test session (not once per module: each export traces and validates, seconds apiece) under
pytest's session temp folder. Tests that alter a file copy it first."""

from __future__ import annotations

from pathlib import Path

import pytest

MAX_BATCH = 8
_EXPORTS: dict[str, Path] = {}


def exported(preset: str, factory: pytest.TempPathFactory) -> Path:
    """``export_onnx(preset, <tmp>/<preset>.onnx, max_batch=8)``, fp32, cached for the session."""
    if preset not in _EXPORTS:
        from ddpm_export.export.onnx import export_onnx

        folder = factory.mktemp(f"export-{preset}")
        _EXPORTS[preset] = export_onnx(preset, folder / f"{preset}.onnx", max_batch=MAX_BATCH,
                                       log=lambda message: None).path
    return _EXPORTS[preset]
