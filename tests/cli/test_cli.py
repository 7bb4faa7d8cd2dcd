"""The ``ddpm-export`` command line (``ddpm_export.cli``)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from ddpm_export import __version__
from ddpm_export.cli import main
from ddpm_export.presets import preset_dir


def test_help_lists_the_commands():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output and "Commands:" in result.output
    assert main.commands, "the group has no subcommands"
    commands = result.output.split("Commands:", 1)[1]
    for name in main.commands:
        assert f"  {name} " in commands or commands.rstrip().endswith(f"  {name}"), name
    assert "models" in main.commands
    assert CliRunner().invoke(main, ["-h"]).output == result.output


def test_version():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert f"ddpm-export, version {__version__}" in result.output


def test_unknown_command_fails():
    result = CliRunner().invoke(main, ["no-such-command"])
    assert result.exit_code == 2
    assert "No such command" in result.output


def test_installed_entry_point_help():
    exe = shutil.which("ddpm-export")
    if exe is None:
        pytest.skip("the ddpm-export script is not installed (pip install -e .)")
    proc = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "Usage: ddpm-export" in proc.stdout and "models" in proc.stdout


def test_module_help_does_not_import_torch():
    """--help must work in an app without PyTorch: the CLI imports torch only inside subcommands."""
    code = ("import sys; from click.testing import CliRunner; from ddpm_export.cli import main; "
            "r = CliRunner().invoke(main, ['--help']); assert r.exit_code == 0, r.output; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr


def test_models_lists_the_presets_with_their_sizes(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    (tmp_path / "tiny").mkdir()  # a folder of the user's named like a preset: the preset is still listed
    (tmp_path / "tiny" / "config.json").write_text((preset_dir("digits") / "config.json").read_text())
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["models"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0].split() == ["preset", "parameters", "input", "conditioning", "ships"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert sorted(rows) == ["ddpm-cifar10", "digits", "kitchen-sink", "tiny"]
    assert rows["ddpm-cifar10"][1:] == ["35,746,307", "3x32x32", "unconditional", "config"]
    assert rows["tiny"][1:] == ["177,427", "3x16x16", "unconditional", "config"]  # not the folder's 1x16x16
    assert "Warning" not in result.output
    assert rows["kitchen-sink"][2:] == ["3x16x16", "10", "classes", "config"]
    assert rows["digits"][2:] == ["1x16x16", "10", "classes", "weights,", "onnx"]
    import ddpm_export

    assert rows["digits"][1] == f"{sum(p.numel() for p in ddpm_export.load_model('digits').parameters()):,}"
