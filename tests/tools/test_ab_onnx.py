"""tools/ab_onnx.py: a smoke run on the tiny model, dynamic and static sessions side by side."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("torch")

from runtime_exports import exported  # noqa: E402


def load_tool() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "tools" / "ab_onnx.py"
    spec = importlib.util.spec_from_file_location("tools_ab_onnx", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_times_files_side_by_side(tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]) -> None:
    tiny = exported("tiny", tmp_path_factory)
    assert load_tool().main([str(tiny), f"{tiny}+static", "--rounds", "3", "--batch", "2",
                                      "--threads", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "1 threads, batch 2, 3 rounds" in lines[0]
    rows = {line.split()[0]: line for line in lines[1:3]}
    assert set(rows) == {"tiny.onnx", "tiny.onnx+static"}
    assert re.search(r"wall +[\d.]+ ms x1\.000 .* max abs diff 0\.0e\+00", rows["tiny.onnx"])
    # the same graph with the batch axis fixed: the same numbers, whatever the speed
    assert float(re.search(r"max abs diff ([\d.e+-]+)", rows["tiny.onnx+static"]).group(1)) <= 1e-5


def test_refuses_an_unknown_suffix(tmp_path_factory: pytest.TempPathFactory) -> None:
    tiny = exported("tiny", tmp_path_factory)
    with pytest.raises(SystemExit, match=r"\+static"):
        load_tool().main([f"{tiny}+fast", "--rounds", "1"])
