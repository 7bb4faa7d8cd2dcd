"""tools/triton_bench.py refuses an -n its repository could not serve before it starts a server
(-n 5000 started one, which refused every request past 1024 images: a traceback, exit 1)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.triton  # the tool checks for tritonclient and the server first (skipped without)
TOOL = Path(__file__).resolve().parents[2] / "tools" / "triton_bench.py"


def _no_server(*args: object, **kwargs: object) -> None:
    raise AssertionError("a server was started for arguments it cannot serve")


def test_images_per_request_past_the_repository_limit_are_refused_before_the_server(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("tools_triton_bench", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    monkeypatch.setattr(tool, "LocalServer", _no_server)
    monkeypatch.setattr("sys.argv", ["triton_bench.py", "-n", "70000"])
    with pytest.raises(SystemExit) as info:
        tool.main()
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    assert err.strip() == ("error: -n must be an int in [1, 65536] (the repository's --max-images), got 70000"), err
