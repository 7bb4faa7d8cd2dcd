"""Shared by the bad-input corpus (tests/*/test_bad_*.py): run the CLI, and check that it failed
the way the rules say -- one ``Error:`` line with the expected status and words, no traceback --
and that nothing under the watched folders was written, changed or left behind."""

from __future__ import annotations

import hashlib
import os
import re
import resource
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterable

from click.testing import CliRunner, Result

from ddpm_export.cli import main


def snapshot(*roots: Path) -> dict[str, str]:
    """Every entry under ``roots`` (hidden ones included) -> its content hash, ``dir`` or ``link``."""
    state = {}
    for root in roots:
        if not root.exists():
            continue
        for path in sorted([root, *root.rglob("*")]):
            key = str(path)
            if path.is_symlink():
                state[key] = f"link:{path.readlink()}"
            elif path.is_dir():
                state[key] = "dir"
            else:
                state[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def run(args: Iterable[str]) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def expect_failure(args: Iterable[str], status: int, *words: str, watch: Iterable[Path] = ()) -> str:
    """Run ``ddpm-export args``; assert exit ``status``, an ``Error:`` line holding every one of
    ``words`` (regular expressions), no traceback, and no change under ``watch``; the output."""
    watch = list(watch)
    before = snapshot(*watch)
    result = run(args)
    out = result.output
    assert result.exit_code == status, f"exit {result.exit_code}, want {status}: {out}"
    assert isinstance(result.exception, SystemExit), f"escaped: {result.exception!r}\n{out}"
    assert "Traceback" not in out, out
    errors = [line for line in out.splitlines() if line.startswith("Error")]
    assert errors, f"no Error line: {out}"
    for word in words:
        assert re.search(word, out), f"{word!r} not in {out!r}"
    assert snapshot(*watch) == before, "files were written or changed"
    return out


def run_with_memory_limit(args: Iterable[str], limit: int) -> subprocess.CompletedProcess:
    """``python -m ddpm_export args`` in a subprocess whose address space stops at ``limit`` bytes
    (RLIMIT_AS): an allocation past it fails as on a machine with less memory."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.run([sys.executable, "-m", "ddpm_export", *map(str, args)], env=env, capture_output=True,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)), text=True,
                          timeout=300, check=False)


def run_with_file_size_limit(args: Iterable[str], limit: int, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``python -m ddpm_export args`` in a subprocess that cannot write a file past ``limit`` bytes
    (RLIMIT_FSIZE, with SIGXFSZ ignored, so the write fails with EFBIG as on a full disk)."""
    def set_limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.run([sys.executable, "-m", "ddpm_export", *map(str, args)], cwd=cwd, env=env,
                          preexec_fn=set_limit, capture_output=True, text=True, timeout=300, check=False)
