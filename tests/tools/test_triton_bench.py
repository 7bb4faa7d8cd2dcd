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


def test_the_unet_batching_figure_counts_the_throughput_phase_alone(tmp_path: Path) -> None:
    """It counted every unet call since the server started, the warm-up and the one-at-a-time
    latency requests too (which never share a batch), so README's images per execution read low:
    here 4 requests x 2 steps in one round are 8 calls of 1 image each, and nothing else."""
    import json
    import os
    import subprocess
    import sys

    out = tmp_path / "tb.json"
    run = subprocess.run([sys.executable, str(TOOL), "-n", "1", "--steps", "2", "--repeats", "2", "--clients", "2",
                          "--requests", "4", "--rounds", "1", "--json", str(out)],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(out.read_text())
    batching = report["unet_batching"]
    assert batching["calls"] == 8 and 1 <= batching["executions"] <= 8, batching
    assert batching["images_per_execution"] == pytest.approx(8 / batching["executions"])
    assert report["max_abs_vs_pipeline"] == 0.0
