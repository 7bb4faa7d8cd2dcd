"""tools/gpu_check.py end to end on whatever this machine has (here: no GPU, so its GPU steps are
skipped): every check it could not run has a SKIP row, and its summary counts them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the script exports the model first")

TOOL = Path(__file__).resolve().parents[2] / "tools" / "gpu_check.py"


@pytest.mark.slow
def test_every_check_has_a_row_and_the_summary_counts_the_skipped_ones(tmp_path: Path) -> None:
    """Without fp32.plan the inspect step added no row: "9 of 10 checks skipped" where 10 of 11 were."""
    proc = subprocess.run([sys.executable, str(TOOL), "--model", "tiny", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=900)
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^(\S.*?)\s{2,}(PASS|SKIP|FAIL)\s{2,}", proc.stdout, re.M)}
    assert len(rows) == 11, proc.stdout  # export, 3 builds, 3 engine verifies, inspect, 2 provider verifies, bench
    if not (tmp_path / "out" / "fp32.plan").is_file():
        assert rows["inspect --profile --engine fp32"] == "SKIP"
    statuses = list(rows.values())
    assert "FAIL" not in statuses, proc.stdout + proc.stderr
    skipped = statuses.count("SKIP")
    assert proc.returncode == (2 if skipped else 0), proc.stdout
    if skipped:
        assert f"{skipped} of 11 checks skipped" in proc.stdout
