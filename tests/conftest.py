"""Skip tests marked ``gpu`` / ``tensorrt`` with the reason when the machine cannot run them."""

from __future__ import annotations

import importlib.util

import pytest


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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reasons = {"gpu": _gpu_missing, "tensorrt": _tensorrt_missing}
    cache: dict[str, str | None] = {}
    for item in items:
        for mark, why in reasons.items():
            if mark in item.keywords:
                if mark not in cache:
                    cache[mark] = why()
                if cache[mark] is not None:
                    item.add_marker(pytest.mark.skip(reason=f"needs {mark}: {cache[mark]}"))
