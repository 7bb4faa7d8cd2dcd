"""Skip tests marked ``gpu`` / ``tensorrt`` / ``triton`` with the reason when the machine cannot run them;
the shared ``tiny_onnx`` fixture."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny preset's fp32 export, made once per test session (:func:`runtime_exports.exported`)."""
    from runtime_exports import exported

    return exported("tiny", tmp_path_factory)


def _gpu_missing() -> str | None:
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    return None if torch.cuda.is_available() else "no CUDA GPU on this machine"


def _tensorrt_missing() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return "the tensorrt package is not installed (pip install 'ddpm-export[gpu]' on a GPU machine)"
    return _gpu_missing()


def _tritonserver_missing() -> str | None:
    if importlib.util.find_spec("tritonclient") is None:
        return "tritonclient is not installed (pip install 'ddpm-export[serve]')"
    from ddpm_export.serve.local_server import find_tritonserver, stub_numpy_site

    if find_tritonserver() is None:
        return "no tritonserver with a Python-backend stub for this Python (pip install nvidia-pytriton --no-deps)"
    if stub_numpy_site(ROOT) is None:
        return ("nvidia-pytriton's Python-backend stub needs numpy<2 and this Python has numpy 2; "
                "./dev installs numpy<2 into .triton-site/ for the server")
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reasons = {"gpu": _gpu_missing, "tensorrt": _tensorrt_missing, "triton": _tritonserver_missing}
    cache: dict[str, str | None] = {}
    for item in items:
        for mark, why in reasons.items():
            if mark in item.keywords:
                if mark not in cache:
                    cache[mark] = why()
                if cache[mark] is not None:
                    item.add_marker(pytest.mark.skip(reason=f"needs {mark}: {cache[mark]}"))
