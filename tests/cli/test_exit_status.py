"""One mapping from errors to exit statuses (``ddpm_export.cli``): 0 success, 1 verification
failed or non-finite, 2 bad input / integrity / environment; one ``Error:`` line, and the
traceback only with ``--debug``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from ddpm_export.cli import main
from ddpm_export.configbase import ConfigError
from ddpm_export.errors import (BadInputError, DdpmExportError, IntegrityError, MissingDependencyError,
                                NonFiniteOutputError, OutputExistsError, VerificationFailed, exit_status)
from ddpm_export.export.tensorrt import TensorRTUnavailable
from ddpm_export.export.validate import ValidationError
from ddpm_export.runtime import BundleError, MetadataError
from ddpm_export.runtime.tensorrt import EngineMismatchError
from ddpm_export.verify import VerifyError


@pytest.mark.parametrize("error, status, builtin", [
    (ConfigError, 2, ValueError), (MetadataError, 2, ValueError), (VerifyError, 2, ValueError),
    (OutputExistsError, 2, FileExistsError), (BundleError, 2, ValueError), (EngineMismatchError, 2, ValueError),
    (TensorRTUnavailable, 2, ImportError), (ValidationError, 1, RuntimeError), (NonFiniteOutputError, 1, RuntimeError),
])
def test_every_error_class_has_a_kind_and_keeps_its_builtin_base(error, status, builtin):
    assert issubclass(error, DdpmExportError) and issubclass(error, builtin)
    assert exit_status(error("x")) == status
    kinds = (BadInputError, IntegrityError, MissingDependencyError, VerificationFailed)
    assert sum(issubclass(error, k) for k in kinds) == 1


def test_a_missing_module_is_an_environment_error():
    assert exit_status(ImportError("no module named tensorrt")) == 2
    assert exit_status(KeyError("a bug")) == 1


def _beside(bundle: Path) -> str:
    """An output path next to the bundle folder (one inside it is refused first)."""
    return str(bundle.parent / f"{bundle.name}.png")


def test_bad_input_is_status_2_with_one_line_and_no_traceback(tmp_path):
    result = CliRunner().invoke(main, ["sample", "--bundle", str(tmp_path), "-o", _beside(tmp_path)])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("Error: ") and "manifest.json: missing" in result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)


def test_debug_shows_the_traceback_and_keeps_the_exit_status(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ddpm_export.cli", "--debug", "sample", "--bundle", str(tmp_path),
                           "-o", _beside(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" in proc.stderr and "BundleError" in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("Error: ") and "manifest.json: missing" in proc.stderr


def test_an_altered_bundle_is_status_2(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "something else"}))
    result = CliRunner().invoke(main, ["sample", "--bundle", str(tmp_path), "-o", _beside(tmp_path)])
    assert result.exit_code == 2 and "'format' must be 'ddpm-export-bundle'" in result.output


def test_an_engine_out_of_memory_is_one_line_and_status_2():
    """ONNX Runtime's std::bad_alloc in the profile of a batch too big for the memory left (the
    address space capped at 2.1 GiB): the machine's limit, not a failed check nor a bug."""
    from bad_inputs import run_with_memory_limit

    from ddpm_export.errors import out_of_memory

    assert out_of_memory(MemoryError()) and out_of_memory(RuntimeError("[enforce fail] DefaultCPUAllocator: "
                                                                       "can't allocate memory: you tried ..."))
    assert not out_of_memory(RuntimeError("shape mismatch")) and not out_of_memory(OSError(12, "out of memory"))
    proc = run_with_memory_limit(["inspect", "--model", "digits", "--profile", "--batch", "4096", "--profile-runs",
                                  "1", "--erf-samples", "1"], 2100 * 2**20)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert "Error: out of memory (" in proc.stderr and "lower the batch" in proc.stderr


def test_a_closed_stdout_is_one_line_and_status_2(tmp_path):
    """`ddpm-export onnx ... | head -1`: the reader exits, the next print fails; said as such
    (was "a file: Broken pipe -- check that the folder exists"), nothing written."""
    import os

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.Popen([sys.executable, "-m", "ddpm_export", "onnx", "--model", "tiny", "-o",
                             str(tmp_path / "t.onnx")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # no reader: the first line printed raises BrokenPipeError
    err = proc.stderr.read().decode()
    assert proc.wait(300) == 2, err
    assert err.strip() == "Error: stdout was closed (the command reading this one's output exited); nothing was " \
                          "left half-written", err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("debug", [[], ["--debug"]], ids=["plain", "debug"])
def test_ctrl_c_is_status_130_with_or_without_debug(tmp_path, debug):
    """SIGINT while sampling: one line, exit 130, nothing written; with --debug the traceback
    before that same line (it was click's 'Aborted!', exit 1 -- a failed check -- and no traceback)."""
    import os
    import re
    import signal

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_WAIT_POLICY": "PASSIVE",
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "ddpm_export", *debug, "-v", "sample", "-n", "400", "--steps",
                             "200", "-o", str(tmp_path / "g.png")], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        seen = b""
        while not re.search(rb"\| \d+/\d+", seen):  # the progress bar: sampling has begun
            chunk = proc.stderr.read(1)
            assert chunk, f"ended before sampling: {seen!r}"
            seen += chunk
        proc.send_signal(signal.SIGINT)
        err = (seen + proc.stderr.read()).decode()
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    # the line last, once (after the bar, which -v draws even on a pipe, and may erase at exit)
    assert err.rstrip(" \r").endswith("Error: interrupted; nothing was left half-written\n"), err
    assert err.count("Error:") == 1, err
    assert ("Traceback" in err and "KeyboardInterrupt" in err) == bool(debug), err
    assert list(tmp_path.iterdir()) == []


def test_a_sigint_a_library_turned_into_another_error_is_still_an_interrupt():
    """A KeyboardInterrupt raised inside a pybind11 module's set-up comes out as ImportError
    (Ctrl-C while onnxruntime loaded: 'import numpy failed'; 'initialization failed'): the user
    saw that error with exit 2. A SIGINT while a command runs is remembered: status 130, the one
    line; and Python's own SIGINT handler is back afterwards."""
    import os
    import signal
    import time

    import click

    @click.command("interrupted-in-import")
    def interrupted_in_import() -> None:
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # the handler raises here
        except KeyboardInterrupt:
            raise ImportError("import numpy failed") from None  # as pybind11 reports it

    main.add_command(interrupted_in_import)
    try:
        result = CliRunner().invoke(main, ["interrupted-in-import"])
    finally:
        del main.commands["interrupted-in-import"]
    assert result.exit_code == 130, result.output
    assert result.output == "Error: interrupted; nothing was left half-written\n"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_numpy_random_is_loaded_before_sampling_begins():
    """numpy 2 loads ``numpy.random`` on first use, and that import's Cython set-up drops a
    KeyboardInterrupt raised inside it: loaded lazily at the first step, a Ctrl-C a few ms after the
    progress bar appeared was lost and sampling ran to the end with status 0 (the flaky
    test above, reproduced with a SIGINT 5 ms after the bar). The runtime loads it at import."""
    code = ("import sys, numpy; assert 'numpy.random' not in sys.modules; "
            "import ddpm_export.runtime.pipeline; print('numpy.random' in sys.modules)")
    env = {"PYTHONPATH": str(Path(__file__).resolve().parents[2]), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.stdout.strip() == "True", out.stderr


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["models"], ["sample", "--help"]])
def test_a_closed_stdout_is_the_same_line_and_status_before_a_command_runs(args):
    """`ddpm-export --help` and `--version` print before any command runs: into a closed stdout
    click exited 1 (a failed check, by our statuses) without a word; now as every command does."""
    import os

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_WAIT_POLICY": "PASSIVE"}
    read, write = os.pipe()
    os.close(read)  # no reader at all: the first write fails
    try:
        proc = subprocess.run([sys.executable, "-m", "ddpm_export", *args], stdout=write, stderr=subprocess.PIPE,
                              text=True, env=env, timeout=120)
    finally:
        os.close(write)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == "Error: stdout was closed (the command reading this one's output exited); nothing was " \
                          "left half-written\n", proc.stderr
